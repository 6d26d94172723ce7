"""Data sets on disk: find or build the TFDS HyperSim data set, open its splits, decode.

`load_data_sources` returns each split as a random-access source (built first
from raw HyperSim frames, or from procedural ones for the demo, where missing);
`array_source` decodes the array_record examples directly (bit-equal to TFDS).
The data are variant-agnostic: uint8 images, metric depth with NaN holes and raw
semantic labels; everything model-specific happens on device in the jitted step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from smd_jax.data import allocator, tf_example
from smd_jax.errors import UserError


# The features the model side consumes; text ids stay on the host.
ARRAY_FEATURES = ("image", "depth", "semantic")


def select_arrays(example: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(example[k]) for k in ARRAY_FEATURES}


# tfds.features.Encoding value -> bytes as stored -> the array's raw bytes, as
# TFDS's Tensor feature decodes them.
_UNPACK = {"bytes": lambda data: data, "zlib": zlib.decompress}


# Data sets whose arrays take at least this many bytes per example are read as
# views into each record (`tf_example.bytes_features`); smaller ones with the
# protobuf parse, whose copies cost less there than reading the wire format in
# Python (measured per example: 64 px, 37 KB: 26 us parse vs 64 us views; 256 px,
# 590 KB: 244 vs 129 us; benchmarks/pipeline.py's data set, loaded machine).
VIEWS_FROM_BYTES = 160 * 1024


def _example_parser():
  """tf.train.Example's parser from TFDS's protos (no TensorFlow), imported now."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  return tf_example_pb2.Example.FromString


class _RecordArrays:
  """`select_arrays(source[i])` of a TFDS array_record source, decoded directly.

  Reads the same records and decodes them as TFDS's Tensor feature does (the
  stored bytes, unpacked per `_UNPACK`, then `np.frombuffer` in the feature's
  dtype), so the arrays are bit-equal (tests/test_input_pipeline.py), but skips
  TFDS's generic feature code, Python that holds the GIL and costs more than
  the decoding itself for raw-byte features (benchmarks/pipeline.py). For large
  examples (`VIEWS_FROM_BYTES`) the stored bytes are views into the record, not
  the copies a protobuf parse makes (which stays for records laid out otherwise);
  raw arrays are then read-only views, possibly not aligned to their dtype
  (batching copies them). The process that makes or unpickles one keeps freed
  memory for reuse (`allocator.keep_freed_memory`).
  """

  def __init__(self, source, layout: dict[str, tuple[np.dtype, tuple[int, ...], str]]):
    self.records = source.data_source  # raw serialized tf.train.Example bytes
    self.layout = layout  # feature -> (dtype, shape, encoding)
    self.parse = _example_parser()
    self.views = sum(np.dtype(dtype).itemsize * math.prod(shape)
                     for dtype, shape, _ in layout.values()) >= VIEWS_FROM_BYTES
    allocator.keep_freed_memory()

  # Pickled into worker processes without the parser (protobuf classes do not
  # pickle); it is looked up again when unpickled, on the worker's main thread.
  # Looking it up first from several reader threads at once deadlocks: TFDS
  # imports it lazily, and on Python 3.11 two threads resolving a lazy module
  # wait on each other (functools.cached_property's lock against the import lock).
  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "parse"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, parse=_example_parser())
    allocator.keep_freed_memory()  # in a worker process

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self.records[index]
    stored = tf_example.bytes_features(record, self.layout) if self.views else None
    if stored is None:
      feature = self.parse(record).features.feature
      stored = {k: feature[k].bytes_list.value[0] for k in self.layout}
    return {k: np.frombuffer(_UNPACK[encoding](stored[k]), dtype=dtype).reshape(shape)
            for k, (dtype, shape, encoding) in self.layout.items()}


def _tensor_layout(feature) -> tuple[np.dtype, tuple[int, ...], str] | None:
  """(dtype, shape, encoding) of a fixed-shape Tensor feature stored as bytes `_UNPACK`
  decodes; None for anything else (an Image feature, unknown dimensions, ...)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if type(feature) is not tfds.features.Tensor:  # subclasses (Image, ...) decode otherwise
    return None
  encoding = getattr(getattr(feature, "_encoding", None), "value", None)
  shape = tuple(feature.shape)
  if encoding not in _UNPACK or None in shape:
    return None
  return np.dtype(feature.np_dtype), shape, encoding


def array_source(source: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
  """`source` with a faster decoder where it is a HyperSim TFDS array_record source.

  Any other source (a list, another format, custom TFDS decoders) is returned
  unchanged: only sources whose image, depth and semantic features are all
  fixed-shape Tensor features stored as raw or zlib-compressed bytes (the
  builder's layout, `tfds_hypersim.hypersim_dataset_builder.STORAGE_ENCODING`)
  are taken over.
  """
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  try:
    layout = {k: _tensor_layout(features[k]) for k in ARRAY_FEATURES}
    ours = (getattr(source, "decoders", 1) is None
            and str(getattr(source, "deserialize_method", "")).endswith("DESERIALIZE_AND_DECODE")
            and None not in layout.values())
  except (TypeError, KeyError, AttributeError):
    return source
  return _RecordArrays(source, layout) if ours else source


@dataclasses.dataclass(frozen=True)
class DataPaths:
  data_dir: str  # TFDS data_dir (array_record shards)
  manual_dir: str  # raw HyperSim scene folders


def resolve_paths(data_config, workdir: str) -> DataPaths:
  """Where the TFDS shards and the raw frames live for this config.

  A synthetic data set lives in the workdir unless paths are given, so the demo
  needs nothing outside it.
  """
  if data_config.synthetic.enabled:
    base = os.path.join(workdir, "data")
    data_dir = data_config.get("data_dir") or os.path.join(base, "tfds")
    manual_dir = data_config.get("manual_dir") or os.path.join(base, "raw")
  else:
    data_dir = data_config.get("data_dir") or os.path.expanduser("~/tensorflow_datasets")
    manual_dir = data_config.get("manual_dir") or os.path.join(data_dir, "downloads", "manual")
  return DataPaths(os.path.abspath(os.path.expanduser(data_dir)),
                   os.path.abspath(os.path.expanduser(manual_dir)))


def generate_synthetic(manual_dir: str, synthetic_config) -> None:
  """Writes the procedural raw frames once; a marker file makes it idempotent.

  The marker records what was generated, so a workdir whose frames came from
  another synthetic config is reported instead of silently reused.
  """
  from tfds_hypersim import synthetic  # pylint: disable=g-import-not-at-top

  counts = {s: int(synthetic_config.num_frames[s]) for s in sorted(synthetic_config.num_frames)}
  wanted = json.dumps({"num_frames": counts, "seed": int(synthetic_config.seed)}, sort_keys=True)
  marker = os.path.join(manual_dir, ".synthetic_complete")
  if os.path.exists(marker):
    with open(marker) as f:
      found = f.read().strip()
    if found != wanted:
      raise ValueError(
          f"{manual_dir} holds procedural frames generated with {found}, but the config asks "
          f"for {wanted}. Use a new --workdir (or delete {os.path.dirname(manual_dir)}).")
    return
  logging.info("Generating procedural HyperSim-format frames %s in %s", counts, manual_dir)
  os.makedirs(manual_dir, exist_ok=True)
  synthetic.generate(manual_dir, num_frames=counts, seed=int(synthetic_config.seed))
  with open(marker, "w") as f:
    f.write(wanted + "\n")


def _builder_version() -> str:
  """The version the `hypersim` builder writes and reads, e.g. "3.1.0"."""
  from tfds_hypersim import hypersim_dataset_builder  # pylint: disable=g-import-not-at-top
  return str(hypersim_dataset_builder.Builder.VERSION)


def _built_versions(data_dir: str, config_name: str) -> list[str]:
  """Versions of the `hypersim` data set with `config_name` completely built in `data_dir`
  (TFDS's DATA_DIR/hypersim/<config>/<x.y.z>/ holding dataset_info.json), oldest first."""
  root = os.path.join(data_dir, "hypersim", config_name)
  found = [name for name in (os.listdir(root) if os.path.isdir(root) else [])
           if re.fullmatch(r"\d+\.\d+\.\d+", name)
           and os.path.isfile(os.path.join(root, name, "dataset_info.json"))]
  return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def _built_resolutions(data_dir: str, config_name: str) -> list[int]:
  """Resolutions at which `data_dir` holds the `hypersim` data set, built by this builder
  version, with `config_name`'s other settings (config names are "res<N>" plus a suffix
  for non-default settings)."""
  root = os.path.join(data_dir, "hypersim")
  suffix = re.sub(r"^res\d+", "", config_name)
  version = _builder_version()
  found = []
  for name in os.listdir(root) if os.path.isdir(root) else []:
    match = re.fullmatch(r"res(\d+)" + re.escape(suffix), name)
    if match and version in _built_versions(data_dir, name):
      found.append(int(match.group(1)))
  return sorted(found)


def _not_built_error(paths: DataPaths, config_name: str, resolution: int,
                     problem: str) -> UserError:
  built = _built_resolutions(paths.data_dir, config_name)
  hint = (f" {paths.data_dir} holds the data set at resolution {', '.join(map(str, built))}: "
          f"set --config.data.resolution={built[0]}, or build {resolution} from raw frames."
          if built else "")
  return UserError(
      f"{problem}, and no data set is built at resolution {resolution} in {paths.data_dir}."
      f"{hint} Set --config.data.manual_dir to the folder holding the ai_VVV_NNN scene "
      "folders (docs/data.md) or --config.data.data_dir to a built data set.")


def check_raw_frames(paths: DataPaths, config_name: str, resolution: int) -> None:
  """UserError unless `paths.manual_dir` holds HyperSim scene folders to build from."""
  if not os.path.isdir(paths.manual_dir):
    raise _not_built_error(paths, config_name, resolution,
                           f"No raw HyperSim frames at {paths.manual_dir}")
  if not any(name.startswith("ai_") for name in os.listdir(paths.manual_dir)):
    raise _not_built_error(paths, config_name, resolution,
                           f"{paths.manual_dir} holds no HyperSim scene folders (ai_VVV_NNN)")


def rebuild_command(paths: DataPaths, config) -> str:
  """The `python -m tfds_hypersim.build` line that builds `config` (a HypersimConfig)."""
  from tfds_hypersim import hypersim_dataset_builder as hdb  # pylint: disable=g-import-not-at-top

  args = ["python", "-m", "tfds_hypersim.build", "--manual_dir", paths.manual_dir,
          "--data_dir", paths.data_dir, "--resolution", str(config.resolution)]
  if config.split_scheme != hdb.DEFAULT_SPLIT_SCHEME:
    args += ["--split_scheme", config.split_scheme]
  if config.depth_type != hdb.DEFAULT_DEPTH_TYPE:
    args += ["--depth_type", config.depth_type]
  return shlex.join(args)


def check_version(paths: DataPaths, config, *, rebuild: bool) -> None:
  """What to do when the data set is not built by this builder version but another is.

  TFDS reads only DATA_DIR/hypersim/<config>/<VERSION>/, so an other-version build
  is never read; left alone, a `build` would silently start a rebuild (hours for
  real HyperSim) and a run without raw frames would report "not built". Instead:
  with `rebuild` (the procedural demo set: seconds) this logs the rebuild, which
  the caller then does; otherwise it raises a UserError naming the version found
  and the command that rebuilds. No-op when no other version is built.
  """
  version = _builder_version()
  others = [v for v in _built_versions(paths.data_dir, config.name) if v != version]
  if not others:
    return
  where = os.path.join(paths.data_dir, "hypersim", config.name)
  if rebuild:
    logging.warning("%s holds the procedural data set built by builder version %s only; "
                    "building version %s next to it (the old one is never read).",
                    where, ", ".join(others), version)
    return
  from tfds_hypersim import upgrade  # pylint: disable=g-import-not-at-top
  upgrade_command = shlex.join(["python", "-m", "tfds_hypersim.upgrade", "--data_dir",
                               paths.data_dir, "--config", config.name])
  how = (f"Upgrade it in minutes, without the raw frames: `{upgrade_command}`; or rebuild it"
         if any(v in upgrade.UPGRADABLE_FROM for v in others) else "Rebuild it")
  raise UserError(
      f"{where} holds the data set built by builder version {', '.join(others)}, not "
      f"{version}, the version this code reads (what changed: docs/data.md, \"Data-set "
      f"versions\"). {how} with `{rebuild_command(paths, config)}` (raw frames: "
      "python -m tfds_hypersim.download), or set --config.data.data_dir to a "
      f"{version} build.")


def load_data_sources(data_config, workdir: str, *, build: bool = True) -> dict[str, Sequence]:
  """Random-access sources for each available split of the HyperSim data set.

  Builds the TFDS data set first when `build` (and it is not built yet); with a
  `synthetic` config, generates the raw frames before that. Raises `UserError`
  (before writing anything) when there is neither a built data set at the
  config's resolution nor raw frames to build it from, and when the data set is
  built only by another builder version (`check_version`): a user's HyperSim
  build is then never reused nor silently rebuilt, while the procedural demo set
  is rebuilt.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_hypersim  # pylint: disable=g-import-not-at-top

  paths = resolve_paths(data_config, workdir)
  synthetic = bool(data_config.synthetic.enabled)
  if synthetic and build:
    generate_synthetic(paths.manual_dir, data_config.synthetic)
  resolution = int(data_config.resolution)
  builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(
      resolution, data_config.get("split_scheme", "semantic_md"),
      data_config.get("depth_type", "distance")), data_dir=paths.data_dir)
  if not builder.is_prepared():
    name = builder.builder_config.name
    check_version(paths, builder.builder_config, rebuild=synthetic and build)
    if not build:
      raise _not_built_error(paths, name, resolution, "The data set is not built yet")
    check_raw_frames(paths, name, resolution)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=paths.manual_dir))
  return dict(builder.as_data_source())
