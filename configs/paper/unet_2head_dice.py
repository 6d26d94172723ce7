"""Table 2, Losses, 2-head with Dice: the 2-head model with a soft Dice semantic loss.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.add_semantic_head(config, loss="dice")
  config.paper_row = "unet_2head_dice"
  return config
