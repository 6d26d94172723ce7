"""Throughput of the `hypersim` TFDS builder on procedural HyperSim-format frames.

  python -m benchmarks.build_throughput --frames 32 --resolution 256 --workers 2 \
      --pool process thread

`measure_build(num_frames, resolution, workers) -> frames_per_s` is the entry
point `benchmarks/run.py` imports. It times a whole `download_and_prepare`
(decode the four gzip HDF5 files of each frame, tone map, resize, PNG encode,
write array_record shards) of `num_frames` train frames into a fresh data_dir.
The raw frames are generated once (`synthetic.generate`, with pixel noise so
that the colour files compress like HyperSim's: ~3.5 MB each, float16
768x1024x3) and cached under the temp folder for later calls.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import flags

from smd_jax import cli

NOISE = 0.03  # multiplicative radiance noise: HyperSim-like file sizes


def raw_frames(num_frames: int, seed: int = 0) -> str:
  """Folder of `num_frames` generated train frames (made once, then reused)."""
  from tfds_hypersim import synthetic  # pylint: disable=g-import-not-at-top
  root = os.path.join(tempfile.gettempdir(), f"smd_build_bench_n{num_frames}_s{seed}")
  if not os.path.exists(os.path.join(root, synthetic.MANIFEST)):
    if os.path.exists(root):
      shutil.rmtree(root)
    synthetic.generate(root, num_frames={"train": num_frames}, seed=seed, noise=NOISE)
  return root


def measure_build(num_frames: int, resolution: int, workers: int,
                  pool: str = "process", raw_dir: str | None = None) -> float:
  """Frames per second of a full build of `num_frames` frames at `resolution`
  with `workers` decode workers (`pool`: "process" or "thread")."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_hypersim  # pylint: disable=g-import-not-at-top
  manual = raw_dir or raw_frames(num_frames)
  with tempfile.TemporaryDirectory() as data_dir:
    builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(resolution),
                                    data_dir=data_dir, num_workers=workers, pool=pool)
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
    elapsed = time.perf_counter() - start
    built = builder.info.splits["train"].num_examples
  if built != num_frames:
    raise RuntimeError(f"built {built} of {num_frames} frames")
  return num_frames / elapsed


def measure_decode(num_frames: int, resolution: int, workers: int, pool: str = "process",
                   raw_dir: str | None = None, passes: int = 3) -> float:
  """Steady-state frames/s of the builder's decode+process step alone (no
  writing), pool start-up excluded: timed from the first result to the last,
  over `passes` passes of the frames."""
  from tfds_hypersim import hypersim_dataset_builder as hdb  # pylint: disable=g-import-not-at-top
  from tfds_hypersim import metadata  # pylint: disable=g-import-not-at-top
  manual = raw_dir or raw_frames(num_frames)
  present, _ = hdb.find_frames(manual, metadata.split_frames("train"))
  jobs = [(f, manual, resolution, "distance") for f in present] * passes
  first = None
  for i, result in enumerate(hdb.map_bounded(hdb._process_job, jobs, workers, pool)):  # pylint: disable=protected-access
    if result.example is None:
      raise RuntimeError(result.message)
    if i == 0:
      first = time.perf_counter()
  return (len(jobs) - 1) / (time.perf_counter() - first)


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the flags (absl; `--decode-only` works for `--decode_only`)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer("frames", 32, "Train frames to build.", **fv)
  flags.DEFINE_integer("resolution", 256, "Output resolution.", **fv)
  flags.DEFINE_multi_integer("workers", [2], "Decode worker counts: --workers 1 2 4 or "
                             "repeated.", **fv)
  flags.DEFINE_multi_enum("pool", ["process", "thread"], ["process", "thread"],
                          "Kinds of decode workers.", **fv)
  flags.DEFINE_integer("repeats", 1, "Builds per setting.", **fv)
  flags.DEFINE_bool("decode_only", False, "Steady-state decode rate (measure_decode) instead "
                    "of full builds.", **fv)
  cli.define_hyphen_aliases(flag_values)


def parse_args(argv: Sequence[str] | None = None):
  """The flags of `argv` (without the program name; None: sys.argv); exits 1 on a bad one."""
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__,
                                  multi_value=("workers", "pool"), positional=False,
                                  prog="python -m benchmarks.build_throughput")
  return cli.flag_namespace(flag_values)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  raw = raw_frames(args.frames)
  print(f"{args.frames} frames in {raw}; cpu count {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}")
  for workers in args.workers:
    for pool in args.pool:
      for _ in range(args.repeats):
        measure = measure_decode if args.decode_only else measure_build
        fps = measure(args.frames, args.resolution, workers, pool, raw)
        print(f"pool={pool:7s} workers={workers}: {fps:.2f} frames/s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
