"""Variant of configs/paper/deeplab_2head_ce.py (published row `deeplab_2head_ce`): DeepLabV3 2-head with smp's single-task head form: 1x1 head convs (+ x8), sigmoid
depth, CE over labelled pixels.
"""

from configs.paper import deeplab_2head_ce


def get_config():
  config = deeplab_2head_ce.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  del config.tasks.semantic["loss_params"], config.tasks.semantic["params"]
  return config
