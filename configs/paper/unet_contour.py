"""Table 1, Multi-Input, contour: RGB + semantic contours (3x3 dilation - erosion).

As the authors' ContourModel input variant: new stem channel with PyTorch's default init.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_semantic_input(config, "contours")
  config.paper_row = "unet_contour"
  return config
