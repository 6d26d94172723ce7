"""Variant of configs/paper/deeplab_2head_dice_ce.py (published row `deeplab_2head_dice_ce`): DeepLabV3 2-head Dice+CE as deeplab_2head_ce_1x1, with our Dice+CE (softmax, 1 + 1).
"""

from configs.paper import deeplab_2head_dice_ce


def get_config():
  config = deeplab_2head_dice_ce.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
