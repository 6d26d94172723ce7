"""The demo config shrunk for subprocess tests: toy encoder, dummy HyperSim frames, 32 px.

The encoder "toy" is registered by tests/train_subprocess.py (tests.toy_models).
"""

import os

from configs import default

DUMMY_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tfds_hypersim",
                          "dummy_data")


def get_config():
  config = default.get_config()
  config.model.encoder = "toy"
  with config.model.unlocked():
    config.model.decoder_channels = (8, 8, 8, 8, 8)
  config.data.resolution = 32
  config.data.num_threads = 1
  config.data.num_workers = 0  # subprocess tests stay one process each
  config.data.synthetic.enabled = False
  config.data.manual_dir = os.path.normpath(DUMMY_DATA)
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 12
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.keep_checkpoints = 2
  config.eval_every_steps = -1
  config.num_images = 1
  return config
