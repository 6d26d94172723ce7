"""Embedded demo: procedural HyperSim-format data, no download, a few minutes on CPU.

The real model and pipeline of configs/base.py (EfficientNet-b4 UNet, L1 loss,
TFDS builder, grain), on small 64x64 crops of generated scenes.
`demo_settings` applies the same small-scale setup to any paper config (used by
`python -m smd_jax.experiments --preset demo`).
"""

from configs import base


def demo_settings(config):
  """Shrinks a paper config to the demo's data and schedule (same model and losses)."""
  config.init_from = ""  # from scratch: the demo needs no network (no ImageNet weights)
  config.data.resolution = 64
  config.data.num_threads = 2
  config.data.num_workers = 0  # threads outpace the demo's CPU steps; workers only add start-up
  config.data.worker_timeout_s = 300.0  # longest worker start (first batch), s
  config.data.synthetic.enabled = True
  config.data.synthetic.num_frames = dict(train=160, validation=32, test=8)
  config.batch_size = 8
  config.eval_batch_size = 16
  # 250 steps end where 400 did (validation RMSE 1.38 m vs 1.44 m with seed 0, best
  # constant 1.54 m; docs/benchmarks.md "The embedded demo") with 5/8 of the steps.
  config.num_train_steps = 250
  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule_unit = "step"  # 250 steps are not epochs of the paper
  config.log_every_steps = 25
  # One evaluation and one checkpoint, at the end: an evaluation at step 125 cost
  # ~10% of the run (its pass and the figures), and training does not depend on it.
  config.eval_every_steps = -1
  config.checkpoint_every_steps = 250
  return config


def get_config():
  return demo_settings(base.get_config())
