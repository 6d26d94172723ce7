"""The bytes features of a serialized tf.train.Example, as views into the record.

Reads the protobuf wire format (https://protobuf.dev/programming-guides/encoding/)
of tf.train.Example (TensorFlow's example.proto and feature.proto):

  Example   { Features features = 1; }
  Features  { map<string, Feature> feature = 1; }  // entries { key = 1; value = 2; }
  Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                           Int64List int64_list = 3; } }
  BytesList { repeated bytes value = 1; }

A protobuf parse copies every value into a new `bytes` object (0.59 MB per
example at 256 px); here each wanted feature comes back as a memoryview of the
record, with no copy. Only the layout a protobuf serializer writes for TFDS's
examples is read (each field once, every wanted feature one bytes value); for
anything else, where protobuf's rules (merging repeated messages, last map entry
wins, ...) would decide, `bytes_features` returns None and the caller parses
the record with protobuf.
"""

from __future__ import annotations

from typing import Sequence

_LENGTH_DELIMITED = 2  # wire type of messages, bytes and strings


class _NotVouchedFor(Exception):
  """A record outside the layout read here (the caller parses it with protobuf)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  """(value, position after it) of the base-128 varint at data[pos]."""
  value = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7
    if shift > 63:
      raise _NotVouchedFor


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
  """(field number, start, end) of each field of the message in data[start:end],
  all of which must be length-delimited with field numbers below 16 (one-byte tags)."""
  out = []
  while start < end:
    tag, size = data[start], data[start + 1]
    if tag & 0x87 != _LENGTH_DELIMITED:  # one byte, length-delimited
      raise _NotVouchedFor
    start += 2
    if size & 0x80:  # lengths of 128 and more take several bytes
      size, start = _varint(data, start - 1)
    if start + size > end:
      raise _NotVouchedFor
    out.append((tag >> 3, start, start + size))
    start += size
  return out


def _only(fields: list[tuple[int, int, int]], number: int) -> tuple[int, int]:
  """(start, end) of a message's one field, which must have `number`."""
  if len(fields) != 1 or fields[0][0] != number:
    raise _NotVouchedFor
  return fields[0][1:]


def bytes_features(record: bytes, names: Sequence[str]) -> dict[str, memoryview] | None:
  """{name: the one bytes value of feature `name`} as views into `record`, the
  serialized tf.train.Example; None where the record is not laid out as above."""
  view = memoryview(record)
  wanted = {name.encode(): name for name in names}
  found = {}
  try:
    features = _only(_fields(record, 0, len(record)), 1)
    for number, start, end in _fields(record, *features):
      entry = _fields(record, start, end)
      if number != 1 or [n for n, _, _ in entry] != [1, 2]:
        raise _NotVouchedFor
      name = wanted.get(record[entry[0][1]:entry[0][2]])
      if name is None:
        continue
      if name in found:
        raise _NotVouchedFor
      bytes_list = _only(_fields(record, entry[1][1], entry[1][2]), 1)
      value_start, value_end = _only(_fields(record, *bytes_list), 1)
      found[name] = view[value_start:value_end]
  except (_NotVouchedFor, IndexError):
    return None
  return found if len(found) == len(wanted) else None
