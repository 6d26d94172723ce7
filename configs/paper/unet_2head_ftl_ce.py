"""Table 2, Losses, 2-head with FTL+CE: 0.5 CE + 0.5 Focal Tversky.

As the authors' `FTL_CE`: sigmoid Tversky with alpha 0.8 on FN, 0.2 on FP, gamma 1.5 (the
paper prints 0.7 / 0.3: variants/unet_2head_ftl_ce_paper.py).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "focal_tversky_ce")
  config.paper_row = "unet_2head_ftl_ce"
  return config
