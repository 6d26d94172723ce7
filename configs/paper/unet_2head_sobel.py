"""Table 2, Losses, 2-head with Sobel: depth + a 2-class depth-discontinuity head.

As the authors' SobelLossModel + SobelTrainer: target = (|Sx| OR |Sy| as uint8) > 20 of
the 5x5 Sobel of depth / 15, every pixel counted, L = L1 + 1.0 CE. Our metric-depth
form (magnitude in metres, invalid windows ignored, weight 0.07):
variants/unet_2head_depth_edges.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_heads(config)
  base.add_task(config, "depth_edges", num_outputs=2, loss="ce",
                weight=base.AUTHORS_SOBEL_WEIGHT, **base.AUTHORS_SOBEL)
  config.paper_row = "unet_2head_sobel"
  return config
