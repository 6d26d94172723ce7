"""Table 2, DeepLab, 2-head with CE: DeepLabV3, depth + semantics (CE).

As the authors' MultiLossModel(super_model=DeepLabV3): 3x3 heads + x8 bilinear, no
activation. Ours (smp's 1x1 head, sigmoid depth): variants/deeplab_2head_ce_1x1.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.use_deeplab(config)
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "ce")
  config.paper_row = "deeplab_2head_ce"
  return config
