"""Damaged data-set files: found before training, named when a read fails.

A TFDS array_record split is a list of shard files. A shard cut short (an
interrupted copy, a full disk) or otherwise damaged fails only when a record
of it is read, deep in grain's reader threads, with a message that names no
file. `check_shards` reads the first and the last record of every shard (the
last one needs the file's index, which sits at its end, so a truncated file
fails here) before training; `NamedShardErrors` turns a failed read during
training into one line naming the file and how to rebuild it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from smd_jax.errors import UserError


def _instructions(source) -> list[tuple[str, int]]:
  """(file name, number of records) of each shard, in index order; [] if unknown."""
  records = getattr(source, "data_source", None)  # a TFDS array_record source's reader
  out = []
  for instruction in getattr(records, "_read_instructions", None) or ():
    name = getattr(instruction, "filename", None)
    count = getattr(instruction, "num_records", None)
    if name is None or count is None:
      return []
    out.append((str(name), int(count)))
  return out


def shard_of(files: list[tuple[str, int]], index: int) -> str | None:
  """The file holding example `index`, given each shard's (file, records) in order."""
  for name, count in files:
    if index < count:
      return name
    index -= count
  return None


def damaged_message(file: str | None, error: BaseException, rebuild: str) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  why = f"{type(error).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")
  if file is None:
    return f"Cannot read the data set ({why}). {rebuild}"
  return (f"The data set file {file} is damaged or cut short ({why}). Delete "
          f"{os.path.dirname(file)} and build it again: {rebuild}")


class NamedShardErrors(Sequence):
  """`decoded[i]`, where a failed read raises a `UserError` naming the shard file.

  `raw` is the TFDS source that `decoded` reads (it knows the files); only
  their names are kept, so that this pickles small for worker processes.
  """

  def __init__(self, decoded: Sequence, raw: Any, rebuild: str):
    self.decoded, self.files, self.rebuild = decoded, _instructions(raw), rebuild

  def __len__(self) -> int:
    return len(self.decoded)

  def __getitem__(self, index):
    try:
      return self.decoded[index]
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(damaged_message(shard_of(self.files, int(index)), e, self.rebuild)) from e


def check_shards(sources: Mapping[str, Any], decode, rebuild: str) -> None:
  """Reads and decodes the first and last record of every shard of every split.

  `decode(source)` gives the decoded view of a split (`datasets.array_source`).
  Raises `UserError` naming the first file that fails. Sources that are not
  array_record (lists in tests, other formats) are skipped.
  """
  for source in sources.values():
    decoded, start = decode(source), 0
    for name, count in _instructions(source):
      for index in {start, start + count - 1} if count else ():
        try:
          decoded[index]
        except Exception as e:  # pylint: disable=broad-except
          raise UserError(damaged_message(name, e, rebuild)) from e
      start += count


def rebuild_command(paths, data_config) -> str:
  """The command that builds the config's data set (what training runs when it is missing)."""
  return (f"python -m tfds_hypersim.build --manual_dir {paths.manual_dir} --data_dir "
          f"{paths.data_dir} --resolution {int(data_config.resolution)} --split_scheme "
          f"{data_config.get('split_scheme', 'semantic_md')} --depth_type "
          f"{data_config.get('depth_type', 'distance')} (or run smd_jax.train again: it builds "
          "a missing data set from those raw frames).")
