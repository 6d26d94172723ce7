"""Variant of configs/paper/unet_2head_dice_ce.py (published row `unet_2head_dice_ce`): 2-head Dice+CE with our choices: softmax Dice + CE over labelled pixels, weights
1 + 1 (the paper's "equally weighted" sum), sigmoid depth head.
"""

from configs.paper import unet_2head_dice_ce


def get_config():
  config = unet_2head_dice_ce.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
