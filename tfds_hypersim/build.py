"""Builds the `hypersim` TFDS data set from raw frames (what `tfds build` does,
without TensorFlow, which the `tfds` command needs).

  python -m tfds_hypersim.build --manual_dir /data/hypersim --data_dir /data/tfds \\
      [--resolution 256] [--split_scheme semantic_md|official] \\
      [--depth_type distance|planar] [--workers N] [--pool thread|process] \\
      [--record_compression none|zstd]

Prints the split sizes and the skipped frames per reason (also stored in the
data set's metadata.json). Flags are absl's (`--flag=value` or `--flag value`;
`--manual-dir` spellings work too); a bad flag is one line `error: ...` with
exit status 1, a missing or empty --manual_dir or a bad data-set choice one
with exit status 2. See docs/data.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import flags

from smd_jax import cli
from smd_jax.errors import UserError
from tfds_hypersim import hypersim_dataset_builder as hdb


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the command's flags."""
  flags.DEFINE_string("manual_dir", None, "Raw HyperSim scene folders "
                      "(python -m tfds_hypersim.download).", flag_values=flag_values)
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into.", flag_values=flag_values)
  flags.DEFINE_integer("resolution", 256, "Image height and width in pixels.",
                       flag_values=flag_values)
  flags.DEFINE_enum("split_scheme", hdb.DEFAULT_SPLIT_SCHEME, list(hdb.SPLIT_SCHEMES),
                    "Which frames make the splits.", flag_values=flag_values)
  flags.DEFINE_enum("depth_type", hdb.DEFAULT_DEPTH_TYPE, list(hdb.DEPTH_TYPES),
                    "Depth along the ray (distance) or along the optical axis (planar).",
                    flag_values=flag_values)
  flags.DEFINE_integer("workers", None, "Decode workers.", flag_values=flag_values)
  flags.DEFINE_enum("pool", "thread", ["thread", "process"], "Kind of decode workers.",
                    flag_values=flag_values)
  flags.DEFINE_enum("record_compression", hdb.DEFAULT_RECORD_COMPRESSION,
                    sorted(hdb.RECORD_COMPRESSION), "array_record shards uncompressed "
                    "(fastest to read) or zstd (6-7x smaller on disk).", flag_values=flag_values)
  flags.mark_flags_as_required(["manual_dir", "data_dir"], flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def _error(message: str) -> int:
  """Bad input for the build (as opposed to a bad flag): one line, exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  return 2


def run(flag_values: flags.FlagValues, args: Sequence[str]) -> int:
  """Builds the data set the flags describe; returns the exit status."""
  if args:
    raise UserError(f"Unexpected arguments {' '.join(args)}.")
  manual_dir = flag_values.manual_dir
  if not os.path.isdir(manual_dir) or not any(
      name.startswith("ai_") for name in os.listdir(manual_dir)):
    return _error(f"--manual_dir {manual_dir} holds no HyperSim scene folders (ai_VVV_NNN); "
                  "fetch them with python -m tfds_hypersim.download --out DIR (docs/data.md)")
  try:
    config = hdb.hypersim_config(flag_values.resolution, flag_values.split_scheme,
                                 flag_values.depth_type)
  except ValueError as e:
    return _error(str(e))
  builder = hdb.Builder(config=config, data_dir=flag_values.data_dir,
                        num_workers=flag_values.workers, pool=flag_values.pool,
                        record_compression=flag_values.record_compression)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except FileNotFoundError as e:
    return _error(f"{str(e).splitlines()[0]} (is --manual_dir the folder holding the "
                  "ai_VVV_NNN scene folders, and --split_scheme the right one?)")
  print(f"built hypersim/{config.name} in {builder.data_dir}")
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples")
  print(f"  skipped: {builder.info.metadata['skipped']}")
  print(f"  listed but not in --manual_dir: {builder.info.metadata['absent']}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The command on `argv` (without the program name; None: sys.argv); returns the exit status."""
  usage = "\n\n".join(__doc__.split("\n\n")[:2])
  return cli.run_argv(run, define_flags, argv, usage=usage,
                      prog="python -m tfds_hypersim.build")


if __name__ == "__main__":
  sys.exit(main())
