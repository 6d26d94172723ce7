"""Variant of configs/paper/unet_3head.py (published row `unet_3head`): 3-head with the choices of unet_2head_sigmoid.
"""

from configs.paper import unet_3head


def get_config():
  config = unet_3head.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
