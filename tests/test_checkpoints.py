"""Orbax round trip of the train state and the grain iterator position; damaged
checkpoints; metrics attached after a save."""

import asyncio
import functools
import gc
import glob
import json
import logging
import os
import sys
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from smd_jax.training import checkpoints, steps


class Tiny(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.linear(x))


def make_state(seed):
  model = Tiny(nnx.Rngs(seed))
  model(jnp.arange(6.0).reshape(2, 3) * (seed + 1))  # move BN statistics off their init
  _, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-3)
  return steps.TrainState(step=jnp.asarray(7 + seed, jnp.int32), params=params, model_state=rest,
                          opt_state=tx.init(params))


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_round_trip_state_and_data_iterator(tmp_path):
  ds = grain.MapDataset.source(list(range(20))).shuffle(seed=0).repeat().batch(3).to_iter_dataset()
  it = iter(ds)
  for _ in range(4):
    next(it)
  saved = make_state(0)
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  assert ckpt.save(7, saved, it)
  ckpt.close()
  want_next = [next(it).tolist() for _ in range(3)]

  # A new process would start from a fresh state and a fresh iterator.
  other = make_state(1)
  assert not leaves_equal(saved, other)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 7
  fresh_it = iter(ds)
  restored, step = ckpt.restore(other, fresh_it)
  ckpt.close()
  assert step == 7
  assert leaves_equal(restored, saved)
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  assert [next(fresh_it).tolist() for _ in range(3)] == want_next


def test_keeps_last_n_and_respects_interval(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2, save_interval_steps=5)
  state = make_state(0)
  saved = [s for s in range(1, 21) if ckpt.save(s, state)]
  ckpt.wait()
  assert saved == [5, 10, 15, 20]
  assert ckpt.all_steps() == [15, 20]
  assert ckpt.save(21, state, force=True)
  ckpt.close()
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 21


def test_restore_without_checkpoint_is_clear(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  try:
    ckpt.restore(make_state(0))
  except FileNotFoundError as e:
    assert "No checkpoint" in str(e)
  else:
    raise AssertionError("expected FileNotFoundError")


def _cut_largest_data_file(step_dir):
  """Cuts the step's array data short: every OCDBT data file of its state to half its size
  (which file holds which array depends on Orbax's write order, so all of them)."""
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.isfile(p)]
  assert files, step_dir
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


# A restore that fails part-way leaves TensorStore reads that call back into Orbax's
# closed event loop; Python would report each ("Exception ignored ... Event loop is
# closed", with a traceback) during or after the restore. Here such a report fails the test.
NO_LATE_REPORTS = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@NO_LATE_REPORTS
def test_damaged_newest_is_passed_over_and_set_aside(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  for step, seed in ((1, 0), (2, 1), (3, 2)):
    ckpt.save(step, make_state(seed), force=True)
  ckpt.close()
  _cut_largest_data_file(os.path.join(str(tmp_path), "checkpoints", "3"))

  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  restored, step, damaged = ckpt.restore_newest_intact(make_state(5))
  assert step == 2 and [s for s, _ in damaged] == [3] and damaged[0][1]
  assert leaves_equal(restored, make_state(1))  # step 2 was saved from seed 1
  aside = ckpt.set_aside(3, damaged[0][1])
  assert aside.endswith(os.path.join("checkpoints", "3.damaged"))
  assert damaged[0][1] in open(os.path.join(aside, "DAMAGED.txt")).read()
  assert ckpt.all_steps() == [1, 2]  # not a step to Orbax any more, nothing deleted
  assert ckpt.save(3, make_state(2), force=True)  # the step can be saved again
  ckpt.close()
  ckpt = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()
  assert os.path.isdir(aside)


@NO_LATE_REPORTS
def test_nothing_restores_lists_every_step(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  ckpt.save(1, make_state(0), force=True)
  ckpt.save(2, make_state(1), force=True)
  ckpt.close()
  for step in ("1", "2"):
    _cut_largest_data_file(os.path.join(str(tmp_path), "checkpoints", step))
  ckpt = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(checkpoints.NoIntactCheckpoint) as e:
    ckpt.restore_newest_intact(make_state(5))
  ckpt.close()
  assert [s for s, _ in e.value.damaged] == [2, 1]


def _unraisable_from(fn):
  """What Python hands sys.unraisablehook for the exception `fn` raises."""
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__,
                                 err_msg=None, object=None)
  raise AssertionError("fn raised nothing")


def _raise(error):
  raise error


def test_only_callbacks_of_reads_outliving_their_restore_are_silenced(monkeypatch):
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  silence = checkpoints._silence_reads_abandoned_by_a_failed_restore  # pylint: disable=protected-access
  silence()
  hook = sys.unraisablehook
  silence()  # every restore calls it: one hook, not a chain of them
  assert sys.unraisablehook is hook is not reported.append
  loop = asyncio.new_event_loop()
  loop.close()
  late_read = _unraisable_from(lambda: loop.call_soon_threadsafe(print))
  sys.unraisablehook(late_read)
  assert reported == []
  # Anything else still reaches the hook that was there: another RuntimeError, the
  # same message from elsewhere, a report about an object.
  other = _unraisable_from(functools.partial(_raise, RuntimeError("Event loop is closed")))
  about_an_object = types.SimpleNamespace(**{**vars(late_read), "object": loop})
  for unraisable in (_unraisable_from(lambda: int("x")), other, about_an_object):
    sys.unraisablehook(unraisable)
  assert len(reported) == 3


async def async_deserialize():  # named as Orbax's array read
  raise ValueError("OUT_OF_RANGE: a damaged file")


async def another_coroutine():
  raise ValueError("something else")


def _task_left_failed(coroutine_fn) -> None:
  """A task that fails unawaited in a loop closed after it; collecting it makes
  asyncio log "Task exception was never retrieved"."""
  loop = asyncio.new_event_loop()
  task = loop.create_task(coroutine_fn())
  loop.run_until_complete(asyncio.sleep(0))
  loop.close()
  assert task.done()
  del task
  gc.collect()


def test_only_unretrieved_failed_reads_of_orbax_are_silenced(monkeypatch, caplog):
  asyncio_log = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_log, "filters", [])
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
  checkpoints._silence_reads_abandoned_by_a_failed_restore()  # pylint: disable=protected-access
  assert len(asyncio_log.filters) == 1
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    _task_left_failed(async_deserialize)
    assert not caplog.records
    _task_left_failed(another_coroutine)  # any other task's error is still logged
  (record,) = caplog.records
  assert "never retrieved" in record.getMessage() and "another_coroutine" in record.getMessage()


def test_metrics_attached_after_the_save_count_for_keep_best(tmp_path):
  """The final step is saved before its evaluation; its metrics come later."""
  ckpt = checkpoints.Checkpointer(str(tmp_path), max_to_keep=1, save_interval_steps=1,
                                  best_metric="depth/rmse")
  state = make_state(0)
  ckpt.save(1, state, metrics={"depth/rmse": 2.0})
  ckpt.save(2, state)
  ckpt.attach_metrics(2, {"depth/rmse": 1.5, "step": 2, "note": "text is dropped"})
  assert ckpt.metrics(2) == {"depth/rmse": 1.5, "step": 2.0}
  # The same file as a save with metrics writes (Orbax's layout).
  with open(os.path.join(ckpt.directory, "1", "metrics", "metrics")) as f:
    assert json.load(f) == {"depth/rmse": 2.0}
  for step in (3, 4):  # later saves without metrics: keep-last-1 plus the best
    ckpt.save(step, state)
  ckpt.close()
  ckpt = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [2, 4]  # 2 (rmse 1.5) beat 1 (rmse 2.0) and was kept
  assert ckpt.best_step() == 2
  ckpt.close()
