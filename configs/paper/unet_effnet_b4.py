"""Table 2, Encoders, EfficientNet-b4: the RGB-only L1 baseline (same model as
unet_l1; the paper reports it separately, from its encoder sweep).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.encoder = "efficientnet_b4"
  config.paper_row = "unet_effnet_b4"
  return config
