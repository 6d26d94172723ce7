"""Table 1, Multi-Input, 1hot-3: RGB + one-hot over wall, floor, ceiling.

As the authors' SimplifiedOneHotModel(3): 3 channels, every other class and unlabelled
pixels all-zero vectors (our "other"-channel form: variants/unet_1hot3_other.py).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_semantic_input(config, "onehot3")
  config.paper_row = "unet_1hot3"
  return config
