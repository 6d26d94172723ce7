"""Table 1, Multi-Task, 2-head: depth + 40-class semantics (CE, lambda 0.07).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.add_semantic_head(config, loss="ce")
  config.paper_row = "unet_2head"
  return config
