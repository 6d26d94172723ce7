"""Upgrades a built `hypersim` data set to this builder's version without the raw frames.

  python -m tfds_hypersim.upgrade --data_dir /data/tfds [--config res256] \\
      [--record_compression none|zstd]

Version 3.1.0 holds the very examples of 3.0.0; only the compression of the
array_record files differs (docs/data.md, "Storage format"). Rebuilding from the
raw frames takes hours for real HyperSim; this copies each record of the 3.0.0
files into files written with the 3.1.0 builder's options (uncompressed unless
--record_compression zstd) and relabels the data set's metadata, minutes per
resolution. The result goes into `<config>/3.1.0` beside `<config>/3.0.0`, which
is left as it was (delete it afterwards to free its disk). The new version is
written into a staging folder and renamed at the end, so an interrupted upgrade
leaves no half data set behind: run it again. Older versions (1.x, 2.x) stored
other features and need a rebuild (`python -m tfds_hypersim.build`).

Without --config, every configuration in --data_dir built at 3.0.0 and not yet at
3.1.0 is upgraded. A bad flag or nothing to upgrade is one line `error: ...` with
exit status 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence

from absl import flags
from array_record.python import array_record_module

from smd_jax import cli
from smd_jax.errors import UserError
from tfds_hypersim import hypersim_dataset_builder as hdb

# Versions whose examples the current builder version holds unchanged.
UPGRADABLE_FROM = ("3.0.0",)
SHARD_MARK = ".array_record-"  # in the file names of TFDS's array_record shards
RECORDS_PER_READ = 64  # records held in memory at once (0.6 MB each at 256 px)
# TFDS's shard file names: <dataset>-<split>.array_record-<index>-of-<count>.
_SHARD_NAME = re.compile(r"-(?P<split>[^-]+)\.array_record-(?P<index>\d+)-of-\d+$")


def version_dir(data_dir: str, config_name: str, version: str) -> str:
  return os.path.join(data_dir, "hypersim", config_name, version)


def _is_built(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "dataset_info.json"))


def upgradable_configs(data_dir: str, target: str) -> list[tuple[str, str]]:
  """(config name, version it is built at) of each configuration in `data_dir`
  built at an `UPGRADABLE_FROM` version and not at `target`."""
  root = os.path.join(data_dir, "hypersim")
  found = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    if _is_built(version_dir(data_dir, name, target)):
      continue
    built = [v for v in UPGRADABLE_FROM if _is_built(version_dir(data_dir, name, v))]
    if built:
      found.append((name, built[-1]))
  return found


def rewrite_shard(source: str, dest: str, options: str) -> int:
  """Copies every record of the array_record file `source`, in order, into a new
  file `dest` written with `options`; returns the number of records."""
  reader = array_record_module.ArrayRecordReader(source)
  writer = array_record_module.ArrayRecordWriter(dest, options)
  try:
    count = reader.num_records()
    for begin in range(0, count, RECORDS_PER_READ):
      for record in reader.read(begin, min(count, begin + RECORDS_PER_READ)):
        writer.write(record)
  finally:
    writer.close()
    reader.close()
  return count


def expected_records(info: dict, shard: str) -> int | None:
  """How many records `dataset_info.json` (as `info`) says the shard file holds; None
  if the file name or the metadata do not say."""
  match = _SHARD_NAME.search(shard)
  for split in info.get("splits", []) if match else ():
    lengths = split.get("shardLengths", [])
    if split.get("name") == match["split"] and int(match["index"]) < len(lengths):
      return int(lengths[int(match["index"])])
  return None


def copy_checked_shard(source: str, dest: str, options: str, expected: int | None) -> int:
  """`rewrite_shard`, failing with one line if the source is damaged: array_record reads
  a truncated or garbled file as fewer (or no) records without an error, so the count
  is checked against the data set's metadata."""
  damaged = (f"{source} looks damaged: {{}}. Nothing was upgraded; rebuild this "
             "configuration from the raw frames (python -m tfds_hypersim.build, docs/data.md).")
  try:
    count = rewrite_shard(source, dest, options)
  except (RuntimeError, ValueError, IndexError, OSError) as e:
    raise UserError(damaged.format(f"reading it failed ({e})")) from e
  if expected is not None and count != expected:
    raise UserError(damaged.format(f"it holds {count} records, its dataset_info.json says "
                                   f"{expected}"))
  return count


def upgrade(data_dir: str, config_name: str, source_version: str, target_version: str,
            record_compression: str, log=print) -> str:
  """Writes `<config>/<target_version>` from `<config>/<source_version>`; returns its path."""
  source = version_dir(data_dir, config_name, source_version)
  target = version_dir(data_dir, config_name, target_version)
  staging = f"{target}.incomplete"
  shutil.rmtree(staging, ignore_errors=True)  # what an interrupted upgrade left
  os.makedirs(staging)
  options = hdb.RECORD_COMPRESSION[record_compression]
  names = sorted(os.listdir(source))
  with open(os.path.join(source, "dataset_info.json")) as f:
    source_info = json.load(f)
  shards = [n for n in names if SHARD_MARK in n]
  for i, name in enumerate(shards, 1):
    count = copy_checked_shard(os.path.join(source, name), os.path.join(staging, name),
                               options, expected_records(source_info, name))
    log(f"  {config_name}: shard {i}/{len(shards)} {name}: {count} records")
  for name in names:
    if SHARD_MARK not in name and os.path.isfile(os.path.join(source, name)):
      shutil.copy2(os.path.join(source, name), os.path.join(staging, name))
  info_path = os.path.join(staging, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info["version"] = target_version
  info.setdefault("releaseNotes", {}).update(
      {v: note for v, note in hdb.Builder.RELEASE_NOTES.items() if v not in info["releaseNotes"]})
  with open(info_path, "w") as f:
    json.dump(info, f, indent=2)
  os.rename(staging, target)  # the version appears whole, or not at all
  return target


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the command's flags."""
  flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the built data set.",
                      flag_values=flag_values)
  flags.DEFINE_string("config", None, "Configuration to upgrade, e.g. res256 (default: "
                      "every one that can be).", flag_values=flag_values)
  flags.DEFINE_enum("record_compression", hdb.DEFAULT_RECORD_COMPRESSION,
                    sorted(hdb.RECORD_COMPRESSION), "array_record files uncompressed "
                    "(fastest to read) or zstd (6-7x smaller on disk).", flag_values=flag_values)
  flags.mark_flags_as_required(["data_dir"], flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def run(flag_values: flags.FlagValues, args: Sequence[str]) -> int:
  """Upgrades what the flags name; returns the exit status."""
  if args:
    raise UserError(f"Unexpected arguments {' '.join(args)}.")
  data_dir, target_version = flag_values.data_dir, str(hdb.Builder.VERSION)
  todo = upgradable_configs(data_dir, target_version)
  if flag_values.config:
    todo = [(name, v) for name, v in todo if name == flag_values.config]
  if not todo:
    which = f"configuration {flag_values.config!r}" if flag_values.config else "configuration"
    raise UserError(
        f"No {which} in {os.path.join(data_dir, 'hypersim')} is built at version "
        f"{' or '.join(UPGRADABLE_FROM)} without a {target_version} build beside it; older "
        "versions need a rebuild: python -m tfds_hypersim.build (docs/data.md).")
  for name, version in todo:
    print(f"upgrading hypersim/{name} {version} -> {target_version} "
          f"(records {flag_values.record_compression})")
    path = upgrade(data_dir, name, version, target_version, flag_values.record_compression)
    print(f"  wrote {path}; {version_dir(data_dir, name, version)} is left as it was "
          "(delete it to free its disk)")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The command on `argv` (without the program name; None: sys.argv); returns the exit status."""
  usage = "\n\n".join(__doc__.split("\n\n")[:2])
  return cli.run_argv(run, define_flags, argv, usage=usage,
                      prog="python -m tfds_hypersim.upgrade")


if __name__ == "__main__":
  sys.exit(main())
