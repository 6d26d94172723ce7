"""Variant of configs/paper/unet_2head_sobel.py (published row `unet_2head_sobel`): 2-head with our depth-edge head: 5x5 Sobel magnitude of depth in metres > 20 (a
step of ~0.42 m instead of ~6.25 m), pixels whose window touches invalid depth
ignored, weight 0.07 like every auxiliary task; sigmoid depth head.
"""

from configs import base  # noqa: F401  (constants used by some variants)
from configs.paper import unet_2head_sobel


def get_config():
  config = unet_2head_sobel.get_config()
  config.model.heads.depth.activation = "sigmoid"
  config.model.head_kernel_size = None
  config.model.branch_init = "smp"
  config.tasks.depth_edges.weight = base.SEMANTIC_WEIGHT
  config.tasks.depth_edges.params = dict(threshold=20.0)
  return config
