"""Table 1, Multi-Task, 2-head: depth + 40-class semantics (CE, lambda 0.07).

As the authors' MultiLossModel: 3x3 heads without activation (linear depth), CE summed
over labelled pixels / all pixels, classes in prevalence order. Our sigmoid-depth form:
variants/unet_2head_sigmoid.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "ce")
  config.paper_row = "unet_2head"
  return config
