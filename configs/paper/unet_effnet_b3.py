"""Table 2, Encoders, EfficientNet-b3: the RGB-only L1 baseline with EfficientNet-b3.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.encoder = "efficientnet_b3"
  config.paper_row = "unet_effnet_b3"
  return config
