"""Table 1, Multi-Input, 1hot-20: RGB + one-hot over the 20 most frequent classes + other.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.semantic_transform = "onehot20"
  config.paper_row = "unet_1hot20"
  return config
