"""Table 2, Losses, 2-head with Sobel: depth + a 2-class head for depth
discontinuities (5x5 Sobel of the ground-truth depth above 20), CE.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.add_task(config, "depth_edges", num_outputs=2, loss="ce", weight=base.SEMANTIC_WEIGHT,
                threshold=20.0)
  config.paper_row = "unet_2head_sobel"
  return config
