"""The real train step and loop, on a tiny EfficientNet so they run fast on 2 CPU cores.

The tiny encoder is the same EfficientNet class with small width/depth
multipliers; everything else (pipeline, builder, step, Orbax, writer) is what a
user runs.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default

from smd_jax.models import efficientnet, registry
from smd_jax.training import data_parallel, steps as steps_lib, trainer

DUMMY_DATA = os.path.join(os.path.dirname(__file__), "..", "tfds_hypersim", "dummy_data")


@pytest.fixture
def tiny_config(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, "tiny_efficientnet",
                      functools.partial(efficientnet.EfficientNet, 0.25, 0.1))
  config = default.get_config()
  config.model.encoder = "tiny_efficientnet"
  with config.model.unlocked():
    config.model.decoder_channels = (16, 8, 8, 8, 8)
  config.data.resolution = 32
  return config


def random_batch(seed, batch=8, size=32):
  rng = np.random.default_rng(seed)
  # Depth grows down the image (a learnable pattern), with noise and NaN holes.
  rows = np.linspace(1.0, 13.0, size, dtype=np.float32)[None, :, None]
  depth = (rows + rng.normal(0, 0.5, (batch, size, size))).astype(np.float32)
  depth[rng.random(depth.shape) < 0.1] = np.nan
  return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          "depth": depth,
          "semantic": rng.integers(-1, 41, (batch, size, size)).astype(np.int16)}


def run_steps(config, num_devices, batches):
  mesh = data_parallel.make_mesh(num_devices)
  model = steps_lib.create_model(config, seed=0)
  steps, state = steps_lib.build_steps(config, model, total_steps=10, mesh=mesh)
  losses = []
  for b in batches:
    state, m = steps.train_step(state, data_parallel.to_global(b, mesh))
    losses.append(float(m["loss"]))
  return losses, data_parallel.fetch(state.params), data_parallel.fetch(state.model_state)


def test_eight_devices_match_one_device(tiny_config):
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  # SGD: a step is lr * grad, so parameters compare tightly. (Adam's first steps
  # move every weight by about +-lr whatever the gradient's size, so a near-zero
  # gradient whose sign depends on the summation order would flip its step.)
  tiny_config.optimizer.name = "sgd"
  tiny_config.optimizer.learning_rate = 0.05
  batches = [random_batch(0)] * 3
  loss1, params1, stats1 = run_steps(tiny_config, 1, batches)
  loss8, params8, stats8 = run_steps(tiny_config, 8, batches)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  assert loss1[2] < loss1[0]  # it learns the (fixed) batches
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params8)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # BatchNorm statistics come from the global batch, not per-device slices.
  for a, b in zip(jax.tree.leaves(stats1), jax.tree.leaves(stats8)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_batch_size_must_divide_devices(tiny_config):
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    data_parallel.check_batch_size(12, data_parallel.make_mesh(8))


def test_train_and_evaluate_on_dummy_data_and_resume(tiny_config, tmp_path):
  config = tiny_config
  config.data.synthetic.enabled = False
  config.data.manual_dir = os.path.abspath(DUMMY_DATA)
  config.data.data_dir = str(tmp_path / "tfds")
  config.batch_size = config.eval_batch_size = 8  # 8 devices; 2 train frames, repeated
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval_every_steps = -1
  config.num_images = 1
  workdir = str(tmp_path / "run")

  results = trainer.train_and_evaluate(config, workdir)
  assert results["step"] == 4 and np.isfinite(results["depth/rmse"])
  assert np.isfinite(results["constant_baseline/rmse"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  with open(os.path.join(workdir, "eval_validation_4.json")) as f:
    saved = json.load(f)
  assert saved["depth/rmse"] == pytest.approx(results["depth/rmse"])
  png = np.asarray(Image.open(os.path.join(workdir, "images", "validation_4.png")))
  assert png.shape == (32, 3 * 32 + 2 * 4, 3)  # input | gt | prediction, one example
  single = np.asarray(Image.open(os.path.join(workdir, "images", "validation_4_0.png")))
  np.testing.assert_array_equal(single, png)
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(e.startswith("events.out.tfevents") for e in events)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [r["step"] for r in logged if "train/loss" in r] == [1, 2, 3, 4]

  # Same workdir, longer schedule: resumes from step 4 instead of starting over.
  config.num_train_steps = 6
  trainer.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [r["step"] for r in logged if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
  assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))
