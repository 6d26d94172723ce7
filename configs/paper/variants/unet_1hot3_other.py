"""Variant of configs/paper/unet_1hot3.py (published row `unet_1hot3`): 1hot-3 with an "other" channel (4 channels), as unet_1hot20_other.
"""

from configs.paper import unet_1hot3


def get_config():
  config = unet_1hot3.get_config()
  config.semantic_transform = "onehot3_other"
  return config
