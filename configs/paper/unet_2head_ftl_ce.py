"""Table 2, Losses, 2-head with FTL+CE: Focal Tversky (alpha 0.7, beta 0.3,
gamma 1.5) + CE.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.add_semantic_head(config, loss="focal_tversky_ce")
  config.paper_row = "unet_2head_ftl_ce"
  return config
