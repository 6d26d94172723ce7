"""Table 2, Encoders, EfficientNet-b2: the RGB-only L1 baseline with EfficientNet-b2.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.encoder = "efficientnet_b2"
  config.paper_row = "unet_effnet_b2"
  return config
