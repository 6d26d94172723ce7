"""Worker processes of the training input pipeline: start and shutdown are bounded."""

import logging
import multiprocessing
import threading
import time

import numpy as np
import pytest

from smd_jax.data import batching
from smd_jax.errors import UserError


def _source(n=8, size=4):
  return [{"image": np.full((size, size, 3), i, np.uint8),
           "depth": np.full((size, size), i, np.float32),
           "semantic": np.full((size, size), i, np.int16)} for i in range(n)]


def _iterator(**kwargs):
  return iter(batching.train_dataset(_source(), global_batch_size=2, seed=0, num_threads=1,
                                     num_workers=1, **kwargs))


def test_a_start_beyond_the_timeout_is_one_clear_error_and_stops_the_workers():
  before = set(multiprocessing.active_children())
  # No worker process starts (spawn, imports) within a millisecond: as a hung start.
  it = _iterator(worker_timeout_s=0.001)
  with pytest.raises(UserError) as e:
    next(it)
  message = str(e.value)
  assert "\n" not in message and "gave no batch within 0 s of their start" in message
  assert "--config.data.num_workers=0" in message
  left = [p for p in multiprocessing.active_children() if p not in before]
  assert not any(p.is_alive() for p in left)


def test_a_shutdown_that_hangs_is_cut_short(monkeypatch, caplog):
  before = set(multiprocessing.active_children())
  it = _iterator()
  first = next(it)
  assert first["image"].shape == (2, 4, 4, 3)
  spawned = [p for p in multiprocessing.active_children() if p not in before]
  assert spawned and all(p.is_alive() for p in spawned)
  # grain's shutdown never returns (as a worker stuck in a system call would make it).
  monkeypatch.setattr(it._running[0], "close", threading.Event().wait)
  monkeypatch.setattr(batching, "WORKER_STOP_TIMEOUT_S", 1.0)
  with caplog.at_level(logging.ERROR):
    it.close()
  assert "did not stop within 1 s" in caplog.text
  for p in spawned:
    p.join(10)
  assert not any(p.is_alive() for p in spawned)


class _ClosesAtOnce:
  def close(self):
    pass


def test_stopping_waits_for_worker_processes_that_are_still_exiting(caplog):
  """grain's close may return while its processes are still on their way out; the stop
  waits for them (within the timeout) instead of returning with them alive, and does
  not terminate a process that ends on its own."""
  process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(1.0,))
  process.start()
  with caplog.at_level(logging.ERROR):
    batching._stop_workers([_ClosesAtOnce()], lambda: [process], timeout_s=30)
  assert not process.is_alive()
  assert process.exitcode == 0 and "did not stop" not in caplog.text
