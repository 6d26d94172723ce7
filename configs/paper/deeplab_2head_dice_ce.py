"""Table 2, DeepLab, 2-head with Dice+CE: DeepLabV3, depth + semantics (Dice + CE).

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.use_deeplab(config)
  base.add_semantic_head(config, loss="dice_ce")
  config.paper_row = "deeplab_2head_dice_ce"
  return config
