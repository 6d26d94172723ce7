"""Table 2, Encoders, Resnet50: the RGB-only L1 baseline with a ResNet50 encoder.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.encoder = "resnet50"
  config.paper_row = "unet_resnet50"
  return config
