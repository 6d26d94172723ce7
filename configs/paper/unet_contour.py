"""Table 1, Multi-Input, contour: RGB + semantic contours (3x3 dilation - erosion).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.semantic_transform = "contours"
  config.paper_row = "unet_contour"
  return config
