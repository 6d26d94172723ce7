"""Table 2, DeepLab, 1hot-40: DeepLabV3 with the one-hot-40 semantic input.

As the authors' deeplab_b4 in SimplifiedOneHotModel(40).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.use_deeplab(config)
  base.authors_semantic_input(config, "onehot40")
  config.paper_row = "deeplab_1hot40"
  return config
