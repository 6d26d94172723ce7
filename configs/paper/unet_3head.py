"""Table 1, Multi-Task, 3-head: depth + semantics (CE) + 2-class contours (CE).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.add_semantic_head(config, loss="ce")
  base.add_contour_head(config)
  config.paper_row = "unet_3head"
  return config
