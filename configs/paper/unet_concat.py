"""Table 1, Multi-Input, concat: RGB + clip(label, 0) / 40 as a 4th channel.

As the authors' ConcatModel: the stem's new input channel has PyTorch's default init.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_semantic_input(config, "concat")
  config.paper_row = "unet_concat"
  return config
