"""Table 1, Multi-Input, concat: RGB + the label map / 40 as a 4th channel.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.semantic_transform = "concat"
  config.paper_row = "unet_concat"
  return config
