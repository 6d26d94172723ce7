"""Table 1, Baseline, l1: EfficientNet-b4 UNet, RGB only, L1 depth loss.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.paper_row = "unet_l1"
  return config
