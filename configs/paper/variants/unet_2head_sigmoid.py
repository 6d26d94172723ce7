"""Variant of configs/paper/unet_2head.py (published row `unet_2head`): 2-head with our choices: a sigmoid depth head (predictions stay in the [0, 15] m
range of the targets), CE averaged over labelled pixels (the weight 0.07 does not
shrink with the unlabelled fraction), NYU40-id class order.
"""

from configs.paper import unet_2head


def get_config():
  config = unet_2head.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
