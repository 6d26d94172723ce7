"""Table 2, Losses, 2-head with Dice+CE: semantic loss 0.5 CE + 0.5 Dice.

As the authors' `Dice_CE` (weight_lambda 0.5, sigmoid Dice, CE / all pixels). Ours (Dice
softmax + CE, weights 1 + 1): variants/unet_2head_dice_ce_softmax.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "dice_ce")
  config.paper_row = "unet_2head_dice_ce"
  return config
