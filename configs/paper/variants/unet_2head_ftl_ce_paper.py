"""Variant of configs/paper/unet_2head_ftl_ce.py (published row `unet_2head_ftl_ce`): 2-head FTL+CE as the paper prints it: alpha 0.7, beta 0.3, gamma 1.5 (softmax,
unlabelled left out, weights 1 + 1), sigmoid depth head.
"""

from configs.paper import unet_2head_ftl_ce


def get_config():
  config = unet_2head_ftl_ce.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
