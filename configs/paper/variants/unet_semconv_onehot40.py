"""Variant of configs/paper/unet_semconv.py (published row `unet_semconv`): Semantic convolution fed one-hot 40 instead of the raw label map: the block's first
conv sees classes as separate channels, not as ordinal ids (-1 .. 40) whose numeric
order means nothing.
"""

from configs.paper import unet_semconv


def get_config():
  config = unet_semconv.get_config()
  config.semantic_transform = "onehot40"
  return config
