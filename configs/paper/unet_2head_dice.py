"""Table 2, Losses, 2-head with Dice: the 2-head model with a Dice semantic loss.

As the authors' code: sigmoid Dice pooled over the batch, unlabelled predictions counted
(their H/W-transposed target is not repeated). Ours: variants/unet_2head_dice_softmax.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "dice")
  config.paper_row = "unet_2head_dice"
  return config
