"""Table 1, Multi-Input, 1hot-40: RGB + one-hot over all 40 NYU40 classes (prevalence order).

As the authors' SimplifiedOneHotModel(40): new stem channels with PyTorch's default init.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_semantic_input(config, "onehot40")
  config.paper_row = "unet_1hot40"
  return config
