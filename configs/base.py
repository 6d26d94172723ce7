"""The paper's training setup (Semantic-MD, Sec. 4): every experiment starts here.

EfficientNet-b4 UNet, L1 depth loss, Adam at 1e-3 with cosine decay to 1e-6 over
15 epochs, batch 32, 256x256 crops, depth clamped to 15 m and divided by 15.
Other configs import this one and change a few fields.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.seed = 0

  config.data = config_dict.ConfigDict(dict(
      name="hypersim",
      data_dir=config_dict.placeholder(str),  # TFDS data_dir; default ~/tensorflow_datasets
      manual_dir=config_dict.placeholder(str),  # raw HyperSim scene folders
      resolution=256,
      num_threads=8,  # grain reader threads per process
      prefetch_batches=2,
      # Procedural HyperSim-format frames written to <workdir>/data (no download).
      synthetic=dict(enabled=False, seed=0, num_frames=dict(train=0, validation=0, test=0)),
  ))

  config.model = config_dict.ConfigDict(dict(
      encoder="efficientnet_b4",
      decoder="unet",
      dtype="float32",  # compute dtype; "bfloat16" for mixed precision (params stay f32)
      heads=dict(depth=dict(num_outputs=1, activation="sigmoid")),
  ))
  # Name of the semantic input transform (smd_jax/semantics.py); "none" = RGB only.
  config.semantic_transform = "none"
  # Per task: loss name (smd_jax/losses.py), weight in L = sum_t w_t L_t, task params.
  config.tasks = config_dict.ConfigDict(dict(
      depth=dict(loss="l1", weight=1.0, params=dict(max_depth=15.0)),
  ))

  config.optimizer = config_dict.ConfigDict(dict(
      name="adam", learning_rate=1e-3, end_learning_rate=1e-6, warmup_steps=0,
      b1=0.9, b2=0.999, eps=1e-8,  # Adam
      momentum=config_dict.placeholder(float),  # SGD
  ))
  config.batch_size = 32  # global, over all devices and hosts
  config.eval_batch_size = 32
  config.num_epochs = 15
  config.num_train_steps = -1  # > 0 overrides num_epochs

  config.log_every_steps = 50
  config.eval_every_steps = -1  # -1: evaluate at the end only
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.max_eval_examples = config_dict.placeholder(int)  # None: the whole split
  config.num_images = 4  # validation examples drawn as PNG panels
  return config
