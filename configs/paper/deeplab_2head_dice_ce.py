"""Table 2, DeepLab, 2-head with Dice+CE: DeepLabV3, depth + 0.5 CE + 0.5 Dice.

As the authors' code (see deeplab_2head_ce and unet_2head_dice_ce). Ours:
variants/deeplab_2head_dice_ce_1x1.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.use_deeplab(config)
  base.authors_heads(config)
  base.add_authors_semantic_head(config, "dice_ce")
  config.paper_row = "deeplab_2head_dice_ce"
  return config
