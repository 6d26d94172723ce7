"""Table 2, DeepLab, l1-baseline: EfficientNet-b4 DeepLabV3 (output stride 8), RGB only.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.use_deeplab(config)
  config.paper_row = "deeplab_l1"
  return config
