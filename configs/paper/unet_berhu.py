"""Table 1, Baseline, BerHu: the baseline with the BerHu depth loss.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.tasks.depth.loss = "berhu"
  config.paper_row = "unet_berhu"
  return config
