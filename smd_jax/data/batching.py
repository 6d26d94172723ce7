"""Batches for training and evaluation, read with grain.

Each JAX process reads its own disjoint part of a split and yields its local
part of the global batch; `data_parallel.to_global` assembles the global array.
Training batches come from a checkpointable grain iterator (optionally decoded
in worker processes); evaluation batches cover a split once, the last one padded.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import flags, logging

from smd_jax.data import shards
from smd_jax.data.datasets import array_source, select_arrays
from smd_jax.errors import UserError

# Worker processes: how long their start (until the first batch) and their
# shutdown may take. Starting imports JAX, grain and TFDS in each of them: ~10 s
# on an idle 2-core machine, once over a minute under heavy load.
WORKER_START_TIMEOUT_S = 300.0
WORKER_STOP_TIMEOUT_S = 60.0

_REBUILD = ("docs/data.md says how to build it (smd_jax.train also builds a missing data set "
            "from --config.data.manual_dir).")


def _decoded(source: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
  """`array_source(source)`, whose failed reads name the damaged shard file."""
  return shards.NamedShardErrors(array_source(source), source, _REBUILD)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the number of JAX processes "
        f"({process_count}); choose a multiple of {process_count}.")
  return global_batch_size // process_count


def train_dataset(source: Sequence[Mapping[str, Any]], *, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 4,
                  prefetch_batches: int = 2, num_workers: int = 0,
                  worker_timeout_s: float | None = None) -> grain.IterDataset:
  """Endless, shuffled (reshuffled every epoch), batched stream of local batches.

  Args:
    source: random-access source of examples (e.g. a `tfds.data_source` split).
    global_batch_size: examples per step over all processes.
    seed: shuffle seed; the same seed gives the same order on every run.
    process_index, process_count: this process's shard of the source.
    num_threads: grain reader threads (in each worker process when `num_workers` > 0).
    prefetch_batches: batches read ahead (per worker process when `num_workers` > 0).
    num_workers: worker processes that read and decode batches; 0 reads in this
      process. The batches and their order are the same for any value.
    worker_timeout_s: the longest the worker processes may take to deliver their
      first batch after a start (default `WORKER_START_TIMEOUT_S`); beyond it
      the iterator stops them and raises `UserError`.

  Returns:
    An `IterDataset` whose iterator yields dicts of numpy arrays
    `image` [b,H,W,3] uint8, `depth` [b,H,W] float32, `semantic` [b,H,W] int16,
    with b = global_batch_size / process_count. Its iterator state is
    checkpointable (`get_state`/`set_state`).
  """
  if num_workers < 0:
    raise UserError(f"data.num_workers={num_workers}: use 0 (read in the training process) "
                    "or a number of worker processes.")
  batch = local_batch_size(global_batch_size, process_count)
  if not len(source):
    raise ValueError("The training split has no examples.")
  # One global order of examples, cut into process-sized chunks: global batch t is
  # chunks t*P .. t*P+P-1, and process p reads only chunk t*P+p. The global batches
  # are thus the same for any number of processes (a run can resume on another
  # topology), and each process reads just its own examples.
  ds = grain.MapDataset.source(_decoded(source)).shuffle(seed=seed).repeat()
  ds = ds.map(select_arrays)
  ds = ds.batch(batch, drop_remainder=True)[process_index::process_count]
  # grain runs at most prefetch_buffer_size reads at once: a smaller buffer than
  # num_threads would leave threads idle (docs/benchmarks.md, input pipeline).
  read = grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=max(prefetch_batches, num_threads))
  if not num_workers:
    return ds.to_iter_dataset(read)
  return _WorkerBatches(ds, read, grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_batches)),
      start_timeout_s=worker_timeout_s or WORKER_START_TIMEOUT_S)


class _WorkerBatches(grain.IterDataset):
  """`batches` read by worker processes, with the in-process pipeline's iterator state.

  The per-example Python (record parsing, grain's map and batch) holds the GIL,
  so threads alone top out near one core; processes do not. Worker w reads batches
  w, w+W, ... and grain interleaves them round-robin: the same batches in the
  same order as without workers. grain
  starts workers with "spawn", never fork, so they are safe next to JAX's
  threads in this process.

  grain's own state for this (per-worker positions) differs from the in-process
  one; ours is the in-process one, {"next_index": batches read}, so a checkpoint
  resumes under any `num_workers`, older checkpoints included.
  """

  def __init__(self, batches: grain.MapDataset, read: grain.ReadOptions,
               workers: grain.MultiprocessingOptions, start_timeout_s: float):
    super().__init__(batches.to_iter_dataset(read))
    self._batches, self._read, self._workers = batches, read, workers
    self._start_timeout_s = start_timeout_s

  def __iter__(self) -> grain.DatasetIterator:
    return _WorkerBatchesIterator(self._batches, self._read, self._workers,
                                  self._start_timeout_s)


class _WorkerBatchesIterator(grain.DatasetIterator):

  def __init__(self, batches, read, workers, start_timeout_s: float):
    super().__init__()
    self._batches, self._read, self._workers = batches, read, workers
    self._start_timeout_s = start_timeout_s
    self._next_index = 0
    # grain's iterator over the worker processes, while they run. Started on first
    # use, so that a restore starts workers once.
    self._running: list[grain.DatasetIterator] = []
    self._delivered = False  # whether the running workers gave a batch yet

  def start_prefetch(self) -> None:
    if not self._running:
      _mark_flags_parsed()
      ds = self._batches[self._next_index:].to_iter_dataset(self._read)
      before = set(multiprocessing.active_children())
      self._running.append(iter(ds.mp_prefetch(self._workers)))
      self._running[0].start_prefetch()
      self._delivered = False
      # Our workers, for stopping them by force (they are started above, but the
      # exact moment is grain's; processes that existed before are never touched).
      self._spawned = lambda: [p for p in multiprocessing.active_children() if p not in before]
      # Also stopped at interpreter exit, while the modules it needs still exist:
      # one left to shutdown leaks shared memory and prints tracebacks.
      self._stop = weakref.finalize(self, _stop_workers, self._running, self._spawned)
    self._running[0].start_prefetch()

  def __next__(self):
    self.start_prefetch()
    if self._delivered:
      batch = next(self._running[0])
    else:  # a start that hangs (seen once under heavy load) must not hang training
      try:
        batch = _call_with_timeout(lambda: next(self._running[0]), self._start_timeout_s)
      except TimeoutError:
        self._stop()
        raise UserError(
            f"The {self._workers.num_workers} data worker processes gave no batch within "
            f"{self._start_timeout_s:.0f} s of their start, so they were stopped. Run the "
            "same command again (training resumes), set --config.data.num_workers=0 to read "
            "in the training process, or allow more time with "
            "--config.data.worker_timeout_s.") from None
      self._delivered = True
    # Copied out of the workers' shared memory (~0.1 ms per MB): the segment is
    # freed now, not whenever the last array aliasing it (a zero-copy JAX
    # array, say) goes, which at interpreter exit leaks it with tracebacks.
    batch = {k: np.array(v) for k, v in batch.items()}
    self._next_index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_index": self._next_index}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if set(state) != {"next_index"}:
      raise UserError(f"Cannot resume the training data iterator from the state {state}.")
    if self._running:
      self._stop()
    self._next_index = int(state["next_index"])

  def close(self) -> None:
    if self._running:
      self._stop()
    super().close()


def _call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
  """`fn()` in a helper thread; TimeoutError if it is not done within `timeout_s`."""
  out = {}

  def call():
    try:
      out["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except  # re-raised below
      out["error"] = e

  thread = threading.Thread(target=call, daemon=True, name="smd_jax-worker-wait")
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise TimeoutError(f"not done within {timeout_s} s")
  if "error" in out:
    raise out["error"]
  return out["value"]


def _stop_workers(running: list, spawned: Callable[[], list],
                  timeout_s: float | None = None) -> None:
  """Closes grain's worker iterator and waits for the worker processes to end; those
  still there after `timeout_s` in all are terminated (killed if that fails).

  Waiting matters: grain's close can return while its processes are still exiting,
  and a caller (a restart, a test) must not find them alive afterwards.
  """
  timeout_s = timeout_s or WORKER_STOP_TIMEOUT_S
  deadline = time.monotonic() + timeout_s
  while running:
    iterator = running.pop()
    try:
      _call_with_timeout(iterator.close, timeout_s)
    except TimeoutError:
      pass
  processes = spawned()
  for process in processes:
    process.join(max(0.0, deadline - time.monotonic()))
  left = [p for p in processes if p.is_alive()]
  if left:
    logging.error("The data worker processes did not stop within %.0f s; terminating %d "
                  "of them.", timeout_s, len(left))
  for process in left:
    process.terminate()
  for process in left:
    process.join(5)
    if process.is_alive():
      process.kill()


def _mark_flags_parsed() -> None:
  # grain reads its absl flags (worker profiling) when it starts workers; outside
  # an absl app (tests, notebooks, benchmarks) nothing parsed them, and their
  # defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


_PAD_VALUES = {"depth": np.nan, "semantic": -1}  # both mean "invalid" everywhere


def pad_batch(examples: list[dict[str, np.ndarray]], size: int,
              template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stacks `examples` and pads to `size` with examples that count for nothing.

  Padding copies `template`'s shapes and dtypes with NaN depth and label -1, and
  `mask` marks the real examples, so pixel-pooled sums are unchanged by padding.
  """
  out = {}
  for k, t in template.items():
    pad = np.full((size - len(examples),) + t.shape, _PAD_VALUES.get(k, 0), t.dtype)
    out[k] = np.concatenate([np.stack([e[k] for e in examples]), pad]) if examples else pad
  out["mask"] = np.arange(size) < len(examples)
  return out


def eval_batches(source: Sequence[Mapping[str, Any]], *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a split in order, every example exactly once.

  Yields local batches of fixed size (the last ones padded, see `pad_batch`).
  Every process yields the same number of batches, as collective evaluation
  steps need, even where its shard runs out first.
  """
  batch = local_batch_size(global_batch_size, process_count)
  source = _decoded(source)  # the training pipeline's decoder, bit-equal to TFDS's
  n = len(source) if max_examples is None else min(len(source), max_examples)
  template = select_arrays(source[0])
  for rows in eval_batch_rows(n, global_batch_size, process_count):
    mine = rows[process_index * batch:(process_index + 1) * batch]
    yield pad_batch([select_arrays(source[int(i)]) for i in mine if i >= 0], batch, template)


def eval_batch_rows(n: int, global_batch_size: int, process_count: int) -> list[np.ndarray]:
  """Example index of every global row of each evaluation batch (-1 = padding).

  Process p reads examples p, p + P, ... and fills rows p*b .. p*b + b - 1 of
  each global batch (b = local batch size); every process has the same number
  of batches, as collective evaluation steps need, even where its part runs out.
  """
  batch = local_batch_size(global_batch_size, process_count)
  parts = [np.arange(n)[p::process_count] for p in range(process_count)]
  out = []
  for start in range(0, -(-n // process_count), batch):
    rows = np.full(batch * process_count, -1, np.int64)
    for p, part in enumerate(parts):
      chunk = part[start:start + batch]
      rows[p * batch:p * batch + len(chunk)] = chunk
    out.append(rows)
  return out
