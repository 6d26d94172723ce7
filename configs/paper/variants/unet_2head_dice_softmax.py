"""Variant of configs/paper/unet_2head_dice.py (published row `unet_2head_dice`): 2-head Dice with our choices: softmax probabilities (the 40 classes are exclusive),
unlabelled pixels left out, sigmoid depth head (as unet_2head_sigmoid).
"""

from configs.paper import unet_2head_dice


def get_config():
  config = unet_2head_dice.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
