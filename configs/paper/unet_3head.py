"""Table 1, Multi-Task, 3-head: depth + semantics (CE) + 2-class contours (CE, 0.1).

As the authors' TripleLossModel (its unused `test` smp.Unet left out): 3x3 heads
without activation, semantic CE / all pixels. Ours: variants/unet_3head_sigmoid.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "ce")
  base.add_contour_head(config)
  config.paper_row = "unet_3head"
  return config
