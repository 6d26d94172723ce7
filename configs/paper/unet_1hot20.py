"""Table 1, Multi-Input, 1hot-20: RGB + one-hot over the 20 most frequent classes.

As the authors' SimplifiedOneHotModel(20): 20 channels, the other classes and
unlabelled pixels all-zero vectors (our "other"-channel form:
variants/unet_1hot20_other.py).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_semantic_input(config, "onehot20")
  config.paper_row = "unet_1hot20"
  return config
