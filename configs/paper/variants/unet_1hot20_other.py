"""Variant of configs/paper/unet_1hot20.py (published row `unet_1hot20`): 1hot-20 with an "other" channel: labelled pixels of the 20 less frequent classes
share a 21st channel instead of being all-zero vectors, so the network can tell
"another class" from "unlabelled".
"""

from configs.paper import unet_1hot20


def get_config():
  config = unet_1hot20.get_config()
  config.semantic_transform = "onehot20_other"
  return config
