"""The real train step and loop at toy sizes, so they run fast on 2 CPU cores.

The step's numerics across devices run on a tiny EfficientNet (the same class with
small width/depth multipliers: depthwise convolutions, squeeze-excitation); the
loop's tests (resume, compiling ahead, epochs) on the toy conv encoder, whose train
step compiles in a few seconds. Everything else (pipeline, builder, step, Orbax,
writer) is what a user runs.
"""

import contextlib
import functools
import importlib
import json
import os
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default

from smd_jax.data import batching, datasets
from smd_jax.evaluation import report
from smd_jax.inference import trained_run
from smd_jax.models import efficientnet, registry
from smd_jax.training import data_parallel, steps as steps_lib, trainer
from tests.toy_models import ToyEncoder

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


@pytest.fixture
def loop_config(tiny_config, monkeypatch):
  """`tiny_config` with the toy encoder: for tests of the loop, not of the step's maths."""
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)
  tiny_config.model.encoder = "toy"
  return tiny_config


def random_batch(seed, batch=8, size=32):
  rng = np.random.default_rng(seed)
  # Depth grows down the image (a learnable pattern), with noise and NaN holes.
  rows = np.linspace(1.0, 13.0, size, dtype=np.float32)[None, :, None]
  depth = (rows + rng.normal(0, 0.5, (batch, size, size))).astype(np.float32)
  depth[rng.random(depth.shape) < 0.1] = np.nan
  return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          "depth": depth,
          "semantic": rng.integers(-1, 41, (batch, size, size)).astype(np.int16)}


F32_EPS = float(np.finfo(np.float32).eps)
# Sums whose terms cancel: their rounding noise is bounded by this fraction of the
# largest element of the tree (see test_eight_devices_match_one_device).
CANCELLATION_FLOOR = 1e-2


def one_step(config, num_devices, batch):
  """(loss, eval-mode depth, initial params, params after one step, BN statistics after it)."""
  mesh = data_parallel.make_mesh(num_devices)
  model = steps_lib.create_model(config, seed=0)
  steps, state = steps_lib.build_steps(config, model, total_steps=10, mesh=mesh)
  global_batch = data_parallel.to_global(batch, mesh)
  depth = data_parallel.fetch(steps.predict_step(state, global_batch))
  params0 = data_parallel.fetch(state.params)
  state, m = steps.train_step(state, global_batch)  # donates the old state
  return (float(m["loss"]), depth, params0, data_parallel.fetch(state.params),
          data_parallel.fetch(state.model_state))


def test_eight_devices_match_one_device(tiny_config):
  """What must agree between 1 and 8 devices: the forward pass, one step's loss and
  gradient, and the BatchNorm statistics of the global batch.

  Several steps are not compared: summation-order noise (different per device count)
  grows by orders of magnitude over a few steps of this model, so a trajectory
  comparison at a tight tolerance fails at random on correct changes.

  Tolerance: a float32 sum of N terms carries a relative error of about
  eps * sqrt(N) (random-walk rounding); the loss, the gradient and the statistics
  are sums over the N = 8*32*32 pixels of the batch. Gradient elements are compared
  against the largest element of their leaf, or a floor of the whole tree's largest
  element for sums whose terms cancel.
  """
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  # SGD at learning rate 1: the step's update is the gradient itself.
  tiny_config.optimizer.name = "sgd"
  tiny_config.optimizer.learning_rate = 1.0
  tiny_config.optimizer.end_learning_rate = 1.0
  batch = random_batch(0)
  n = batch["depth"].size
  tol = 4 * F32_EPS * np.sqrt(n)  # ~4e-5
  loss1, depth1, p0_1, p1_1, stats1 = one_step(tiny_config, 1, batch)
  loss8, depth8, p0_8, p1_8, stats8 = one_step(tiny_config, 8, batch)
  for a, b in zip(jax.tree.leaves(p0_1), jax.tree.leaves(p0_8)):
    np.testing.assert_array_equal(a, b)  # same seed, same start
  # Eval-mode forward pass: per-pixel depth (metres, up to 15) of every example.
  np.testing.assert_allclose(depth8, depth1, rtol=tol, atol=tol * 15.0)
  assert loss8 == pytest.approx(loss1, rel=tol)
  grads1 = [np.float64(a) - np.float64(b) for a, b in zip(jax.tree.leaves(p0_1),
                                                          jax.tree.leaves(p1_1))]
  grads8 = [np.float64(a) - np.float64(b) for a, b in zip(jax.tree.leaves(p0_8),
                                                          jax.tree.leaves(p1_8))]
  assert len(grads1) == len(grads8) > 0
  assert any(np.abs(g).max() > 1e-4 for g in grads1)  # the step moved the parameters
  global_max = max(np.abs(g).max() for g in grads1)
  for g1, g8, p in zip(grads1, grads8, jax.tree.leaves(p1_1)):
    # A leaf's gradient sums terms of up to its own largest value, or, where the
    # terms cancel (a gradient that is analytically 0, e.g. the shift of a BatchNorm
    # that feeds a convolution and another BatchNorm), terms of the network's
    # gradient scale: 1e-2 of the largest one bounds those. (Measured: such leaves
    # reach 1.1e-3 of it on jax 0.12 compiled at the tests' optimisation level 0, so
    # 1e-3 failed there.) p1 = p0 - g is rounded once in float32: eps * |p1| on top.
    scale = max(np.abs(g1).max(), CANCELLATION_FLOOR * global_max)
    atol = tol * scale + 2 * F32_EPS * np.abs(np.float64(p))
    assert np.all(np.abs(g8 - g1) <= atol), np.abs(g8 - g1).max()
  # BatchNorm statistics come from the global batch, not per-device slices. A channel
  # mean that is ~0 (zero-mean features) is cancellation noise of terms of the
  # statistics' scale: a floor of the largest statistic bounds those, as for gradients.
  stats = [np.asarray(a, np.float64) for a in jax.tree.leaves(stats1)]
  stats_max = max(np.abs(a).max() for a in stats if a.size)
  for a, b in zip(stats, jax.tree.leaves(stats8)):
    scale = max(np.abs(a).max(), CANCELLATION_FLOOR * stats_max)
    np.testing.assert_allclose(np.asarray(b, np.float64), a, rtol=tol, atol=tol * scale)


def test_batch_size_must_divide_devices(tiny_config):
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    data_parallel.check_batch_size(12, data_parallel.make_mesh(8))


def dummy_data_config(config, tmp_path, steps=2):
  """`config` on the dummy HyperSim frames (built in `tmp_path`): `steps` steps of batch 8,
  one checkpoint and one evaluation at the end."""
  config.data.synthetic.enabled = False
  config.data.manual_dir = os.path.abspath(DUMMY_DATA)
  config.data.data_dir = str(tmp_path / "tfds")
  config.batch_size = config.eval_batch_size = 8  # 8 devices; 2 train frames, repeated
  config.num_train_steps = steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = steps
  config.eval_every_steps = -1
  config.num_images = 1
  return config


def test_train_and_evaluate_on_dummy_data_and_resume(loop_config, tmp_path):
  config = dummy_data_config(loop_config, tmp_path, steps=4)
  config.checkpoint_every_steps = 2
  workdir = str(tmp_path / "run")

  results = trainer.train_and_evaluate(config, workdir)
  assert results["step"] == 4
  # The final metrics against NumPy: the restored step-4 model's predictions on every
  # validation frame, RMSE over the valid pixels (ground truth clamped to 15 m), and
  # the best constant (the valid depths' mean), whose RMSE is their standard deviation.
  loaded = trained_run.load(workdir)
  assert int(data_parallel.fetch(loaded.state.step)) == 4
  source = report.load_split(loaded.config, workdir, "validation")
  examples = [datasets.select_arrays(source[i]) for i in range(len(source))]
  batch = batching.pad_batch(examples, 8, examples[0])
  pred = data_parallel.fetch(loaded.steps.predict_step(
      loaded.state, data_parallel.to_global(batch, loaded.mesh)))[:len(source)]
  gt = np.asarray(batch["depth"][:len(source)], np.float64)
  valid = np.isfinite(gt) & (gt > 0)
  gt = np.clip(gt, 0, 15.0)
  want_rmse = np.sqrt(np.mean((np.maximum(pred[valid], 1e-3) - gt[valid]) ** 2))
  # float32 sums over a few thousand pixels: ~eps * sqrt(n) relative, n ~ 2e3.
  assert results["depth/rmse"] == pytest.approx(want_rmse, rel=2e-5)
  assert results["constant_baseline/rmse"] == pytest.approx(np.std(gt[valid]), rel=1e-9)
  assert results["constant_baseline/depth"] == pytest.approx(np.mean(gt[valid]), rel=1e-9)
  assert 0 < results["depth/rmse"] and 0 < results["constant_baseline/rmse"]
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


# ------------------------------------------------------ compiling ahead of the data

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # JAX's event per XLA compile


@contextlib.contextmanager
def xla_compiles():
  """[(function name, thread name)] of every XLA compilation while the block runs."""
  seen = []

  def listener(event, duration, **kwargs):
    del duration
    if event == BACKEND_COMPILE:
      seen.append((str(kwargs.get("fun_name")), threading.current_thread().name))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_steps_compiled_ahead_are_not_compiled_again(loop_config, tmp_path, monkeypatch):
  """The train, evaluation and figure steps compile once, on the background thread, while
  the data set is built; the run then gives the same state and metrics as one without."""
  config = dummy_data_config(loop_config, tmp_path)
  with config.data.synthetic.unlocked():
    config.data.synthetic.num_frames.validation = 1  # compile_ahead's cue for eval steps
  monkeypatch.setattr(trainer, "compiles_ahead", lambda config, workdir: True)
  with xla_compiles() as compiles:
    ahead = trainer.train_and_evaluate(config, str(tmp_path / "ahead"))
  names = ("train_step", "eval_step", "predict_step")
  ours = sorted(c for c in compiles if any(n in c[0] for n in names))
  assert [n for n in names if not any(n in c[0] for c in ours)] == [], compiles
  # The train step, and each forward step as its two programs (steps.ForwardStep).
  assert len(ours) == 5 and {t for _, t in ours} == {"smd-compile-ahead"}, ours

  monkeypatch.setattr(trainer, "compiles_ahead", lambda config, workdir: False)
  plain = trainer.train_and_evaluate(config, str(tmp_path / "plain"))
  assert ahead == plain  # same program, same seed: bit-equal metrics
  restored = [data_parallel.fetch(trained_run.load(str(tmp_path / w)).state.params)
              for w in ("ahead", "plain")]
  jax.tree.map(np.testing.assert_array_equal, *restored)


class _Lowerable:
  """Stands in for a jitted function: `lower` returns it; `compile` waits until
  `release` is set, then raises `error` or compiles x * 2."""

  def __init__(self, release: threading.Event, error: Exception | None = None):
    self.release, self.error = release, error

  def lower(self, *args):
    self.args = args
    return self

  def compile(self):
    self.release.wait()
    if self.error is not None:
      raise self.error
    return jax.jit(lambda x: x * 2).lower(*self.args).compile()


SPEC = (jax.ShapeDtypeStruct((2,), np.float32),)


def test_a_failed_compilation_ahead_is_raised_not_swallowed():
  go = threading.Event()
  go.set()
  error = RuntimeError("XLA ran out of memory")
  ahead = steps_lib.CompileAhead([("ok", _Lowerable(go), SPEC),
                                  ("bad", _Lowerable(go, error), SPEC),
                                  ("after", _Lowerable(go), SPEC)])
  with pytest.raises(RuntimeError) as raised:
    ahead.wait()
  assert raised.value is error
  assert list(ahead.seconds) == ["ok"]  # nothing after the failure compiles


def test_a_failed_lowering_raises_on_the_calling_thread():
  with pytest.raises(TypeError, match="dot_general"):  # (2, 3) @ (2, 3) does not type-check
    steps_lib.CompileAhead([("bad", jax.jit(lambda x: x @ x),
                             (jax.ShapeDtypeStruct((2, 3), np.float32),))])


def test_an_error_while_compiling_ahead_waits_for_the_compilation():
  """An exception in the block joins the compiling thread before it propagates (a
  process that exits during a compilation aborts)."""
  release = threading.Event()
  ahead = steps_lib.CompileAhead([("slow", _Lowerable(release), SPEC)])
  threading.Timer(0.2, release.set).start()
  with pytest.raises(KeyError):
    with ahead:
      raise KeyError("data")
  assert "slow" in ahead.seconds  # compiled before the error left the block
  assert list(ahead.wait()) == ["slow"]


def test_compiles_ahead_only_for_a_fresh_run_on_procedural_data(tiny_config, tmp_path,
                                                                monkeypatch):
  workdir = str(tmp_path / "run")
  assert default.get_config().data.synthetic.enabled
  monkeypatch.setattr(os, "cpu_count", lambda: 8)
  assert trainer.compiles_ahead(tiny_config, workdir)
  monkeypatch.setattr(os, "cpu_count", lambda: 2)  # measured not to pay on 2 cores
  assert not trainer.compiles_ahead(tiny_config, workdir)
  monkeypatch.setenv("SMD_COMPILE_AHEAD", "1")
  assert trainer.compiles_ahead(tiny_config, workdir)
  monkeypatch.setattr(os, "cpu_count", lambda: 8)
  monkeypatch.setenv("SMD_COMPILE_AHEAD", "0")
  assert not trainer.compiles_ahead(tiny_config, workdir)
  monkeypatch.setenv("SMD_COMPILE_AHEAD", "1")
  os.makedirs(os.path.join(workdir, "checkpoints"))  # a resumed run: the data are there
  assert not trainer.compiles_ahead(tiny_config, workdir)
  fresh = str(tmp_path / "fresh")
  tiny_config.num_train_steps = -1  # the length depends on the data set's size
  assert not trainer.compiles_ahead(tiny_config, fresh)
  tiny_config.num_train_steps = 5
  tiny_config.data.synthetic.enabled = False
  assert not trainer.compiles_ahead(tiny_config, fresh)


def test_abstract_batch_is_what_the_pipeline_gives(tmp_path):
  """Shapes and dtypes of a real training and evaluation batch of the built data set."""
  config = dummy_data_config(default.get_config(), tmp_path)
  config.data.resolution = 32
  sources = trainer.load_data(config, str(tmp_path / "run"))
  mesh = data_parallel.make_mesh()
  got = {"train": next(trainer.train_iterator(config, sources["train"])),
         "eval": next(batching.eval_batches(sources["validation"], global_batch_size=8))}
  for kind, padded in (("train", False), ("eval", True)):
    want = steps_lib.abstract_batch(32, 8, mesh, padded=padded)
    assert {k: (v.shape, v.dtype) for k, v in got[kind].items()} == \
        {k: (v.shape, v.dtype) for k, v in want.items()}


# ------------------------------------------- the run's length and learning-rate schedule

PAPER_CONFIGS = sorted(
    f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs", "paper"))
    if f.endswith(".py") and f != "__init__.py")


def numpy_cosine(step, total, lr, end):
  """The cosine decay written out: lr at step 0, `end` at step `total` and after."""
  t = np.minimum(np.asarray(step, np.float64), total) / total
  return end + (lr - end) * 0.5 * (1.0 + np.cos(np.pi * t))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_train_15_epochs_of_batch_32_with_cosine_to_1e6(name):
  """Every paper row runs by epochs (docs/method.md: 15 epochs, batch 32, Adam 1e-3,
  cosine decay to 1e-6), none by a fixed step count."""
  config = importlib.import_module(f"configs.paper.{name}").get_config()
  assert config.num_train_steps <= 0, "paper rows run by num_epochs"
  assert (config.num_epochs, config.batch_size) == (15, 32)
  opt = config.optimizer
  assert (opt.name, opt.learning_rate, opt.end_learning_rate, opt.warmup_steps) == \
      ("adam", 1e-3, 1e-6, 0)
  # 1000 training frames: 31 full batches an epoch (the partial one is dropped).
  assert trainer.num_train_steps(config, 1000) == 15 * 31
  assert trainer.num_train_steps(config, 32 * 100) == 1500


def test_num_train_steps_overrides_epochs(tiny_config):
  tiny_config.num_epochs = 3
  tiny_config.batch_size = 8
  tiny_config.num_train_steps = 7
  assert trainer.num_train_steps(tiny_config, 100) == 7
  tiny_config.num_train_steps = -1
  assert trainer.num_train_steps(tiny_config, 100) == 3 * 12
  assert trainer.num_train_steps(tiny_config, 7) == 0


@pytest.mark.parametrize("warmup", [0, 4])
def test_learning_rate_schedule_matches_the_formula(tiny_config, warmup):
  opt = tiny_config.optimizer
  opt.learning_rate, opt.end_learning_rate, opt.warmup_steps = 1e-3, 1e-6, warmup
  total = 20
  schedule = steps_lib.make_schedule(tiny_config, total)
  steps = np.arange(total + 3)
  got = np.array([float(schedule(s)) for s in steps])
  if warmup:
    want = np.where(steps < warmup, 1e-3 * steps / warmup,
                    numpy_cosine(steps - warmup, total - warmup, 1e-3, 1e-6))
  else:
    want = numpy_cosine(steps, total, 1e-3, 1e-6)
  # Written-out points: the start, half-way (the mean of the two rates) and the end.
  assert got[warmup] == pytest.approx(1e-3, rel=1e-6)
  assert got[warmup + (total - warmup) // 2] == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-5)
  assert got[total] == pytest.approx(1e-6, rel=1e-4) and got[-1] == pytest.approx(1e-6, rel=1e-4)
  # float32 evaluation of a cosine: a few eps relative, on rates down to 1e-6.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_an_epoch_run_logs_the_schedule_step_by_step(loop_config, tmp_path):
  """num_epochs decides the run's length through the real loop; the learning rate
  each step logs is the formula's at that step (step k trains with the rate of k-1)."""
  config = loop_config
  config.data.synthetic.num_frames = dict(train=20, validation=1, test=0)
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "raw")
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = -1
  config.num_epochs = 2  # 20 // 8 = 2 batches an epoch: 4 steps
  config.optimizer.learning_rate, config.optimizer.end_learning_rate = 2e-3, 2e-4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 100
  config.eval_every_steps = -1
  config.num_images = 1
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["step"] == 4
  with open(os.path.join(tmp_path, "run", "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  rates = {r["step"]: r["train/learning_rate"] for r in logged if "train/learning_rate" in r}
  assert sorted(rates) == [1, 2, 3, 4]
  np.testing.assert_allclose([rates[k] for k in (1, 2, 3, 4)],
                             numpy_cosine(np.arange(4), 4, 2e-3, 2e-4), rtol=1e-5)


# ------------------------------------------------------------ the logged training means


def test_nonfinite_steps_are_left_out_of_the_logged_means():
  from smd_jax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  depth_task = tasks_lib.build_tasks(default.get_config().tasks)
  sums = lambda count, sq: {"depth/count": np.float32(count), "depth/sq_err": np.float32(sq),
                            **{f"depth/{k}": np.float32(0.0) for k in
                               ("abs_rel", "rme", "log10", "delta1", "delta2", "delta3")}}
  history = [
      {"loss": np.float32(1.0), "loss_depth": np.float32(1.0), "grad_norm": np.float32(2.0),
       "nonfinite": np.bool_(False), "learning_rate": np.float32(0.1), **sums(10, 40.0)},
      {"loss": np.float32(np.nan), "loss_depth": np.float32(np.nan),
       "grad_norm": np.float32(np.inf), "nonfinite": np.bool_(True),
       "learning_rate": np.float32(0.2), **sums(10, 1e6)},
      {"loss": np.float32(3.0), "loss_depth": np.float32(3.0), "grad_norm": np.float32(4.0),
       "nonfinite": np.bool_(False), "learning_rate": np.float32(0.3), **sums(30, 0.0)},
  ]
  out = trainer._finalize_train_metrics(history, depth_task)  # pylint: disable=protected-access
  assert out["loss"] == 2.0 and out["loss_depth"] == 2.0 and out["grad_norm"] == 3.0
  assert out["nonfinite_steps"] == 1.0 and out["learning_rate"] == pytest.approx(0.3)
  # Pooled over the two good steps' 40 pixels: sqrt((40 + 0) / 40); the skipped
  # step's pixels would make it sqrt(1e6 / 50).
  assert out["depth/rmse"] == pytest.approx(1.0)
