"""Input pipeline throughput: samples/s that `batching.train_dataset` yields from
the array_record shards of a built HyperSim TFDS data set.

The data set is the procedural one the demo builds (same builder, same features:
raw uint8 image, float32 depth and int16 label bytes since builder version 3.0.0,
in uncompressed array_record files since 3.1.0), generated once into a cache
folder and reused by later runs. Also times one
example's read + decode on one thread, TFDS's (`source[i]`) and the pipeline's
(`datasets.array_source`), to tell decode cost from pipeline overhead.

Rows cover reader threads in the training process (`num_workers` 0) and worker
processes (`data.num_workers`, with `num_threads` threads each): decoding holds
the GIL, so threads stop near one core and workers are what scales.

The small generated split is viewed as one of the paper's train split's size
(`PAPER_TRAIN_FRAMES`, example i is frame i mod n): grain's index shuffle walks
cycles over a domain of at least ~2^16, so on a 128-example source it costs ~0.3 ms
per example (more than decoding a 64x64 one), against ~7 us at 19,399 examples.
The tiled view wraps the pipeline's decoder (`array_source`), as `train_dataset`
would wrap the source itself.
"""

from __future__ import annotations

import os
import time

from benchmarks import timing
from configs import default
from smd_jax.data import batching, datasets


PAPER_TRAIN_FRAMES = 19_399  # the Semantic-MD train split (Sec. 4.1; docs/data.md)


class Tiled:
  """`source` repeated to `length` examples: example i is source[i % len(source)]."""

  def __init__(self, source, length: int):
    self.source, self.length = source, length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int):
    return self.source[index % len(self.source)]


def data_config(size: int, num_frames: int):
  config = default.get_config().data
  config.resolution = size
  config.synthetic.num_frames = dict(train=num_frames, validation=0, test=0)
  return config


def train_source(cache_dir: str, size: int, num_frames: int):
  """The train split's random-access source, built into `cache_dir` if needed."""
  sources = datasets.load_data_sources(data_config(size, num_frames),
                                             os.path.join(cache_dir, f"frames{num_frames}"))
  return sources["train"]


def decode_rate(source, count: int) -> float:
  """Examples/s of `source[i]` (array_record read + decode), one thread."""
  count = min(count, len(source))
  start = time.perf_counter()
  for i in range(count):
    datasets.select_arrays(source[i])
  return count / (time.perf_counter() - start)


def benchmark(cache_dir: str, *, size: int, num_frames: int, batch_size: int,
              threads: tuple[int, ...], batches: int, repeats: int,
              workers: tuple[int, ...] = (0,)) -> list[dict]:
  """One row per (worker processes, reader threads) pair: median samples/s over
  `repeats` runs of `batches` batches, after warm-up batches."""
  start = time.perf_counter()
  source = train_source(cache_dir, size, num_frames)
  prepare_s = time.perf_counter() - start
  one_thread = decode_rate(source, 4 * batch_size)
  fast = datasets.array_source(source)
  fast_one_thread = decode_rate(fast, 4 * batch_size)
  rows = []
  for num_workers in workers:
    for num_threads in threads:
      prefetch = max(2, num_threads)
      start = time.perf_counter()
      it = iter(batching.train_dataset(Tiled(fast, PAPER_TRAIN_FRAMES),
                                             global_batch_size=batch_size, seed=0,
                                             num_threads=num_threads, prefetch_batches=prefetch,
                                             num_workers=num_workers))
      next(it)
      start_s = time.perf_counter() - start  # worker processes: spawn + imports
      # Warm-up past every buffer (per worker, and grain's interleave of workers):
      # read as fast as we can, the buffers drain to their steady state, so the
      # timed batches are produced, not merely taken from a full buffer.
      for _ in range(1 + 2 * prefetch * max(1, num_workers)):
        next(it)
      t = timing.repeat(lambda: [next(it) for _ in range(batches)], repeats=repeats, warmup=0,
                        items=batches * batch_size)
      if hasattr(it, "close"):
        it.close()  # stops worker processes now, not at garbage collection
      rows.append({"side": "pipeline", "size": size, "batch_size": batch_size,
                   "num_workers": num_workers, "num_threads": num_threads,
                   "examples": len(source), "samples_per_s": t.per_s, "times": t.times,
                   "spread": t.spread, "start_s": start_s,
                   "decode_one_thread_per_s": one_thread,
                   "fast_decode_one_thread_per_s": fast_one_thread, "prepare_s": prepare_s})
  return rows
