"""Table 1, Multi-Input, sem. conv.: one-hot 40 -> learned MBConv block -> 3 channels.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.semantic_transform = "onehot40"
  config.model.input_block = "semantic_conv"
  config.paper_row = "unet_semconv"
  return config
