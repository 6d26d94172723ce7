"""Batches for training and evaluation, read with grain.

Each JAX process reads its own disjoint part of a split and yields its local
part of the global batch; `data_parallel.to_global` assembles the global array.
Training batches come from a checkpointable grain iterator (optionally decoded
in worker processes); evaluation batches cover a split once, the last one padded.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import flags

from smd_jax.data.datasets import array_source, select_arrays
from smd_jax.errors import UserError


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the number of JAX processes "
        f"({process_count}); choose a multiple of {process_count}.")
  return global_batch_size // process_count


def train_dataset(source: Sequence[Mapping[str, Any]], *, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 4,
                  prefetch_batches: int = 2, num_workers: int = 0) -> grain.IterDataset:
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
  ds = grain.MapDataset.source(array_source(source)).shuffle(seed=seed).repeat()
  ds = ds.map(select_arrays)
  ds = ds.batch(batch, drop_remainder=True)[process_index::process_count]
  # grain runs at most prefetch_buffer_size reads at once: a smaller buffer than
  # num_threads would leave threads idle (docs/benchmarks.md, input pipeline).
  read = grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=max(prefetch_batches, num_threads))
  if not num_workers:
    return ds.to_iter_dataset(read)
  return _WorkerBatches(ds, read, grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_batches)))


class _WorkerBatches(grain.IterDataset):
  """`batches` read by worker processes, with the in-process pipeline's iterator state.

  The per-example Python (record parsing, grain's map and batch) holds the GIL,
  so threads alone top out near one core; processes do not. Worker w reads batches w, w+W, ... and grain interleaves them
  round-robin: the same batches in the same order as without workers. grain
  starts workers with "spawn", never fork, so they are safe next to JAX's
  threads in this process.

  grain's own state for this (per-worker positions) differs from the in-process
  one; ours is the in-process one, {"next_index": batches read}, so a checkpoint
  resumes under any `num_workers`, older checkpoints included.
  """

  def __init__(self, batches: grain.MapDataset, read: grain.ReadOptions,
               workers: grain.MultiprocessingOptions):
    super().__init__(batches.to_iter_dataset(read))
    self._batches, self._read, self._workers = batches, read, workers

  def __iter__(self) -> grain.DatasetIterator:
    return _WorkerBatchesIterator(self._batches, self._read, self._workers)


class _WorkerBatchesIterator(grain.DatasetIterator):

  def __init__(self, batches, read, workers):
    super().__init__()
    self._batches, self._read, self._workers = batches, read, workers
    self._next_index = 0
    # grain's iterator over the worker processes, while they run. Started on first
    # use, so that a restore starts workers once.
    self._running: list[grain.DatasetIterator] = []

  def start_prefetch(self) -> None:
    if not self._running:
      _mark_flags_parsed()
      ds = self._batches[self._next_index:].to_iter_dataset(self._read)
      self._running.append(iter(ds.mp_prefetch(self._workers)))
      # Also stopped at interpreter exit, while the modules it needs still exist:
      # one left to shutdown leaks shared memory and prints tracebacks.
      self._stop = weakref.finalize(self, _stop_workers, self._running)
    self._running[0].start_prefetch()

  def __next__(self):
    self.start_prefetch()
    # Copied out of the workers' shared memory (~0.1 ms per MB): the segment is
    # freed now, not whenever the last array aliasing it (a zero-copy JAX
    # array, say) goes, which at interpreter exit leaks it with tracebacks.
    batch = {k: np.array(v) for k, v in next(self._running[0]).items()}
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


def _stop_workers(running: list) -> None:
  while running:
    running.pop().close()


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
  source = array_source(source)  # the training pipeline's decoder, bit-equal to TFDS's
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
