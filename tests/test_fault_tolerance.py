"""Runs that are killed or preempted resume exactly; non-finite steps are skipped.

The training runs are real `smd_jax.train` processes (tests/train_subprocess.py:
toy encoder, dummy HyperSim frames at 32 px, 2 simulated CPU devices). One
uninterrupted run is the reference; a run killed with SIGKILL, or stopped with
SIGTERM, and then restarted in the same workdir must log bitwise the same
losses for every step and end with bitwise the same parameters.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smd_jax import errors, losses
from smd_jax.models import registry
from smd_jax.training import checkpoints, data_parallel, steps as steps_lib, trainer
from tests import subprocess_runs as runs, toy_config
from tests.toy_models import ToyEncoder

pytestmark = pytest.mark.timeout(900)
STEPS = toy_config.get_config().num_train_steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run; its data set and compilation cache are shared by the other runs."""
  root = tmp_path_factory.mktemp("fault_tolerance")
  shared = dict(tfds=str(root / "tfds"), cache=str(root / "xla_cache"))
  workdir = str(root / "reference")
  rc, out, err = runs.finish(runs.start_training(
      workdir, f"--config.data.data_dir={shared['tfds']}", cache_dir=shared["cache"]))
  assert rc == 0, err[-3000:]
  assert "Final validation RMSE" in out
  return dict(shared, root=root, workdir=workdir)


def _run(reference, workdir, *, env=None):
  return runs.start_training(workdir, f"--config.data.data_dir={reference['tfds']}",
                             cache_dir=reference["cache"], env=env)


def _start_slowed(reference, name, slow_from):
  """A run in workdir `name` that slows down from step `slow_from` on, once it got there."""
  workdir = str(reference["root"] / name)
  marker = str(reference["root"] / f"{name}_marker")
  proc = _run(reference, workdir, env=dict(SMD_TEST_SLOW_FROM_STEP=str(slow_from),
                                           SMD_TEST_MARKER=marker))
  runs.wait_for_file(marker, proc)
  return workdir, proc


def _assert_same_run(workdir, reference):
  want = runs.train_losses(reference["workdir"])
  assert sorted(want) == list(range(1, STEPS + 1))
  assert runs.train_losses(workdir) == want  # every step, bitwise
  got, ref = runs.load_checkpoint(workdir, STEPS), runs.load_checkpoint(reference["workdir"], STEPS)
  assert jax.tree.structure(got) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_kill_9_then_restart_reproduces_the_run_bitwise(reference):
  workdir, proc = _start_slowed(reference, "killed", slow_from=8)
  proc.send_signal(signal.SIGKILL)
  assert runs.finish(proc)[0] == -signal.SIGKILL
  ckpt_dir = os.path.join(workdir, "checkpoints")
  kept = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  # Saves every 3 steps, killed in step 8: step 6's async save may not have finished.
  assert kept and kept[-1] in (3, 6)
  # A save cut short (as a crash mid-write leaves it) must not be picked up:
  partial = os.path.join(ckpt_dir, f"9.orbax-checkpoint-tmp-{os.getpid()}")
  shutil.copytree(os.path.join(ckpt_dir, str(kept[-1])), partial)
  for path in glob.glob(os.path.join(partial, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)

  rc, out, err = runs.finish(_run(reference, workdir))
  assert rc == 0, err[-3000:]
  _assert_same_run(workdir, reference)


def test_sigterm_saves_the_current_step_exits_0_and_resumes(reference):
  workdir, proc = _start_slowed(reference, "preempted", slow_from=5)
  proc.send_signal(signal.SIGTERM)
  rc, out, err = runs.finish(proc)
  assert rc == 0, err[-3000:]
  stopped = max(runs.train_losses(workdir))  # the last step that ran
  assert 5 <= stopped < STEPS
  assert f"Preempted at step {stopped}" in out
  assert str(stopped) in os.listdir(os.path.join(workdir, "checkpoints"))

  rc, out, err = runs.finish(_run(reference, workdir))
  assert rc == 0, err[-3000:]
  _assert_same_run(workdir, reference)


def _copy_of_reference(reference, name, keep_up_to, logs_up_to=None):
  """The reference workdir with the checkpoints up to step `keep_up_to` and the logged
  losses up to `logs_up_to` (default: the same step)."""
  workdir = str(reference["root"] / name)
  shutil.copytree(reference["workdir"], workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for entry in os.listdir(ckpt_dir):
    if entry.isdigit() and int(entry) > keep_up_to:
      shutil.rmtree(os.path.join(ckpt_dir, entry))
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    kept = [line for line in f if json.loads(line)["step"] <= (logs_up_to or keep_up_to)]
  with open(path, "w") as f:
    f.writelines(kept)
  return workdir


def _truncate_largest_data_file(step_dir):
  """Cuts the largest array data file of a checkpoint in half (as a bad copy leaves it)."""
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.isfile(p)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


def _evaluate(workdir, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(runs.TESTS, "evaluate_subprocess.py"),
         f"--workdir={workdir}", "--num_images=0", *flags]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
  return done.returncode, done.stdout, done.stderr


def _log_lines(err, text):
  return [line for line in err.splitlines() if text in line]


def _error_line(err):
  """The one `error: ...` line of a failed command (library warnings may precede it)."""
  errors_ = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors_) == 1 and "Traceback" not in err, err[-3000:]
  return errors_[0]


def test_damaged_newest_checkpoint_is_skipped_kept_and_the_run_ends_the_same(reference):
  # Steps 10-12 must be trained again: their logged losses are cut.
  workdir = _copy_of_reference(reference, "damaged", keep_up_to=STEPS, logs_up_to=9)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) == [9, 12]
  damaged = _truncate_largest_data_file(os.path.join(ckpt_dir, "12"))
  damaged_size = os.path.getsize(damaged)

  # Evaluation of the damaged step: one line naming it and the intact one; `latest` falls back.
  rc, out, err = _evaluate(workdir, "--checkpoint=12")
  assert rc == 1, err[-3000:]
  line = _error_line(err)
  assert line.startswith("error: Checkpoint 12 in ") and line.endswith(
      "other kept checkpoints: 9 (--checkpoint STEP).")
  rc, out, err = _evaluate(workdir, "--checkpoint=latest")
  assert rc == 0, err[-3000:]
  assert len(_log_lines(err, "Checkpoint 12 in")) == 1 and "Using step 9" in err
  assert "| 9 |" in out

  rc, out, err = runs.finish(_run(reference, workdir))
  assert rc == 0, err[-3000:]
  warnings = _log_lines(err, "Skipped checkpoint 12")
  assert len(warnings) == 1 and "resumed from step 9" in warnings[0], err[-3000:]
  assert "Traceback" not in err
  # Kept under a name that says so, with the damaged file as it was; not a step to Orbax.
  aside = os.path.join(ckpt_dir, "12.damaged")
  assert os.path.isfile(os.path.join(aside, "DAMAGED.txt"))
  kept = os.path.join(aside, os.path.relpath(damaged, os.path.join(ckpt_dir, "12")))
  assert os.path.getsize(kept) == damaged_size
  _assert_same_run(workdir, reference)


def test_kill_9_during_the_final_evaluation_loses_no_step(reference):
  workdir = str(reference["root"] / "killed_in_eval")
  marker = str(reference["root"] / "killed_in_eval_marker")
  proc = _run(reference, workdir, env=dict(SMD_TEST_EVAL_MARKER=marker))
  runs.wait_for_file(marker, proc)
  proc.send_signal(signal.SIGKILL)
  assert runs.finish(proc)[0] == -signal.SIGKILL
  assert os.path.exists(os.path.join(workdir, "train.lock"))  # left behind by the killed run
  _assert_same_run(workdir, reference)  # step 12 is saved, bitwise the reference's

  rc, out, err = runs.finish(_run(reference, workdir))  # takes over the stale lock, evaluates
  assert rc == 0, err[-3000:]
  assert len(_log_lines(err, "Taking over the lock of process")) == 1, err[-3000:]
  assert "Training 12 steps (from step 12)" in err
  assert not os.path.exists(os.path.join(workdir, "train.lock"))
  with open(os.path.join(workdir, f"eval_validation_{STEPS}.json")) as f:
    results = json.load(f)
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  assert ckpt.metrics(STEPS)["depth/rmse"] == results["depth/rmse"]  # for keep-best
  assert ckpt.best_step("depth/rmse") == STEPS
  ckpt.close()


def test_second_run_in_a_locked_workdir_exits_1_and_the_first_is_unharmed(reference):
  workdir = _copy_of_reference(reference, "locked", keep_up_to=9)
  marker, gate = (str(reference["root"] / f"locked_{n}") for n in ("marker", "gate"))
  first = _run(reference, workdir, env=dict(SMD_TEST_SLOW_FROM_STEP="10", SMD_TEST_MARKER=marker,
                                            SMD_TEST_WAIT_FOR=gate))
  try:
    runs.wait_for_file(marker, first)  # holds the lock, waiting in step 10
    before = runs.tree_snapshot(workdir)
    rc, out, err = runs.finish(_run(reference, workdir))
    assert rc == 1
    assert _error_line(err).startswith(f"error: The workdir {workdir} is in use by a training "
                                       f"run: process {first.pid} on host ")
    assert runs.tree_snapshot(workdir) == before  # wrote nothing
  finally:
    open(gate, "w").close()
  rc, out, err = runs.finish(first)
  assert rc == 0, err[-3000:]
  _assert_same_run(workdir, reference)


def test_truncated_data_set_shard_is_one_line(reference, tmp_path):
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(reference["tfds"], data_dir)
  shard, = glob.glob(os.path.join(data_dir, "hypersim", "*", "*", "hypersim-train.array_record*"))
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) * 9 // 10)
  workdir = str(tmp_path / "run")
  rc, out, err = runs.finish(runs.start_training(
      workdir, f"--config.data.data_dir={data_dir}", cache_dir=reference["cache"]))
  assert rc == 1
  line = _error_line(err)
  assert line.startswith(f"error: The data set file {shard} is damaged or cut short"), line
  assert f"python -m tfds_hypersim.build --manual_dir {toy_config.get_config().data.manual_dir}" \
      f" --data_dir {data_dir} --resolution 32" in line
  assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------
# Non-finite losses: the step is skipped in the jitted step, the loop stops
# after config.max_nonfinite_steps in a row.


def _nan_when_far(pred, target, valid):
  """L1, but NaN for a batch whose valid targets reach 1 (depth >= max_depth): a 'bad batch'."""
  far = jnp.max(jnp.where(valid, target, 0.0)) >= 1.0
  return jnp.where(far, jnp.nan, losses.l1_loss(pred, target, valid))


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)
  monkeypatch.setitem(losses.LOSSES, "nan_when_far", _nan_when_far)
  config = toy_config.get_config()
  config.tasks.depth.loss = "nan_when_far"
  return config


def _batch(depth_m, seed=0, n=8, size=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "depth": np.full((n, size, size), depth_m, np.float32) + rng.uniform(
              0, 1, (n, size, size)).astype(np.float32),
          "semantic": rng.integers(-1, 41, (n, size, size)).astype(np.int16)}


def test_nonfinite_step_leaves_the_state_unchanged(toy):
  mesh = data_parallel.make_mesh()
  steps, state = steps_lib.build_steps(toy, steps_lib.create_model(toy, 0), 10, mesh)
  state, m = steps.train_step(state, data_parallel.to_global(_batch(3.0), mesh))
  assert not bool(m["nonfinite"]) and np.isfinite(float(m["loss"]))
  before = data_parallel.fetch(state)
  state, m = steps.train_step(state, data_parallel.to_global(_batch(20.0), mesh))  # clamped to 1
  assert bool(m["nonfinite"]) and np.isnan(float(m["loss"]))
  after = data_parallel.fetch(state)
  assert int(after.step) == int(before.step) + 1
  for name in ("params", "model_state", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
      np.testing.assert_array_equal(a, b)
  state, m = steps.train_step(state, data_parallel.to_global(_batch(3.0, seed=1), mesh))
  assert not bool(m["nonfinite"])  # the next good batch trains again
  changed = data_parallel.fetch(state.params)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(before.params), jax.tree.leaves(changed)))


def test_training_stops_after_several_nonfinite_steps_in_a_row(toy, tmp_path, monkeypatch):
  toy.data.data_dir = str(tmp_path / "tfds")
  toy.tasks.depth.params.max_depth = 0.5  # every valid depth clamps to 1: every loss is NaN
  toy.max_nonfinite_steps = 4
  toy.checkpoint_every_steps = 3
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.UserError) as e:
    trainer.train_and_evaluate(toy, workdir)
  message = str(e.value)
  assert "Stopped at step 4" in message and "4 steps in a row" in message
  assert "last checkpoint is step 3" in message
  # What was saved is finite: skipped steps never changed the (initial) parameters.
  saved = runs.load_checkpoint(workdir, 3)
  init = data_parallel.fetch(steps_lib.build_steps(toy, steps_lib.create_model(toy, toy.seed), 10,
                                              data_parallel.make_mesh(1))[1].params)
  for a, b in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(init)):
    np.testing.assert_array_equal(a, b)
