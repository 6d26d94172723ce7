"""Builds the `hypersim` TFDS data set from raw frames (what `tfds build` does,
without TensorFlow, which the `tfds` command needs).

  python -m tfds_hypersim.build --manual_dir /data/hypersim --data_dir /data/tfds \
      [--resolution 256] [--split_scheme semantic_md|official] \
      [--depth_type distance|planar] [--workers N] [--pool thread|process]

Prints the split sizes and the skipped frames per reason (also stored in the
data set's metadata.json). See docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from tfds_hypersim import hypersim_dataset_builder as hdb


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tfds_hypersim.build",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--manual_dir", required=True,
                      help="raw HyperSim scene folders (python -m tfds_hypersim.download)")
  parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
  parser.add_argument("--resolution", type=int, default=256)
  parser.add_argument("--split_scheme", choices=hdb.SPLIT_SCHEMES, default=hdb.DEFAULT_SPLIT_SCHEME)
  parser.add_argument("--depth_type", choices=hdb.DEPTH_TYPES, default=hdb.DEFAULT_DEPTH_TYPE)
  parser.add_argument("--workers", type=int, default=None, help="decode workers")
  parser.add_argument("--pool", choices=("thread", "process"), default="thread")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.manual_dir) or not any(
      name.startswith("ai_") for name in os.listdir(args.manual_dir)):
    print(f"error: --manual_dir {args.manual_dir} holds no HyperSim scene folders "
          "(ai_VVV_NNN); fetch them with python -m tfds_hypersim.download --out DIR "
          "(docs/data.md)", file=sys.stderr)
    return 2
  try:
    config = hdb.hypersim_config(args.resolution, args.split_scheme, args.depth_type)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  builder = hdb.Builder(config=config, data_dir=args.data_dir, num_workers=args.workers,
                        pool=args.pool)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  except FileNotFoundError as e:
    print(f"error: {str(e).splitlines()[0]} (is --manual_dir the folder holding the "
          "ai_VVV_NNN scene folders, and --split_scheme the right one?)", file=sys.stderr)
    return 2
  print(f"built hypersim/{config.name} in {builder.data_dir}")
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples")
  print(f"  skipped: {builder.info.metadata['skipped']}")
  print(f"  listed but not in --manual_dir: {builder.info.metadata['absent']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
