"""TFDS builder `hypersim`: raw HyperSim HDF5 frames -> tone-mapped, resized,
center-cropped examples with the Semantic-MD paper's scene split.

    import tfds_hypersim
    builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(256), data_dir=D)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=RAW))
    source = builder.as_data_source()["train"]   # random access, no TensorFlow

Per-frame processing lives in `processing.py` (pure numpy); this module only
finds the frames, runs the processing and declares the features.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
from collections.abc import Iterator

from absl import logging
from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import writer as tfds_writer

from tfds_hypersim import metadata, processing

KNOWN_BROKEN = "known_broken"  # skip reason: trajectory in metadata.KNOWN_BROKEN

_DESCRIPTION = """
HyperSim (Roberts et al., ICCV 2021) photorealistic synthetic indoor frames,
prepared as in Semantic-MD (Charyyev et al.): HyperSim's tone map to LDR RGB,
short side resized to the config's resolution (antialiased bilinear for RGB,
nearest for depth and labels), center crop to a square. `depth` is HyperSim's
depth_meters (Euclidean distance to the camera centre, metres; NaN where there
is no geometry; planar z-depth in the `planar` configs); `semantic` the NYU40
label (1..40, -1 unlabelled). Splits are the paper's scene split (train/val/test
lists) or HyperSim's official v1 split (`official` configs), restricted to the
frames found in the manual directory; broken or incomplete frames are skipped,
with counts per reason in the metadata ("skipped").
"""


SPLIT_SCHEMES = metadata.SPLIT_SCHEMES
DEPTH_TYPES = ("distance", "planar")
DEFAULT_SPLIT_SCHEME = "semantic_md"
DEFAULT_DEPTH_TYPE = "distance"
# How image, depth and labels are stored: their raw bytes (`tobytes()`, read back
# with `np.frombuffer`). Chosen by measurement (docs/data.md, "Storage format"):
# PNG and zlib decoding bound the input pipeline at 256 px; raw bytes decode
# 15-36x faster.
STORAGE_ENCODING = tfds.features.Encoding.BYTES
# How the array_record shards are compressed: name -> array_record writer options
# (one record per chunk, `group_size:1`, for random access, as TFDS writes them).
# "none" is the default since 3.1.0: array_record's zstd then bounded the input
# pipeline at 256 px (decompressing a 0.59 MB record costs several times reading
# it), for 6-7x less disk (docs/data.md, "Storage format"). Either reads the same.
RECORD_COMPRESSION = {
    "none": "group_size:1,uncompressed",
    "zstd": "group_size:1,zstd:3",  # TFDS's own choice (array_record's default level)
}
DEFAULT_RECORD_COMPRESSION = "none"


@dataclasses.dataclass
class HypersimConfig(tfds.core.BuilderConfig):
  """Config of the `hypersim` builder.

  Attributes:
    resolution: side in pixels of the stored square examples.
    split_scheme: "semantic_md" (the paper's scene split lists, default) or
      "official" (HyperSim's v1 split csv, public frames only).
    depth_type: "distance" (HyperSim's depth_meters, Euclidean distance to the
      camera centre; the paper's choice, default) or "planar" (z-depth along the
      optical axis, from each scene's M_cam_from_uv; see `planar_depth`).
  """

  resolution: int = 256
  split_scheme: str = DEFAULT_SPLIT_SCHEME
  depth_type: str = DEFAULT_DEPTH_TYPE


def config_name(resolution: int, split_scheme: str = DEFAULT_SPLIT_SCHEME,
                depth_type: str = DEFAULT_DEPTH_TYPE) -> str:
  """"res{N}" for the paper's defaults, else e.g. "res256_official_planar"."""
  name = f"res{resolution}"
  if split_scheme != DEFAULT_SPLIT_SCHEME:
    name += f"_{split_scheme}"
  if depth_type != DEFAULT_DEPTH_TYPE:
    name += f"_{depth_type}"
  return name


def _make_config(resolution: int, split_scheme: str = DEFAULT_SPLIT_SCHEME,
                 depth_type: str = DEFAULT_DEPTH_TYPE) -> HypersimConfig:
  if not 1 <= resolution <= processing.HEIGHT:
    raise ValueError(f"resolution must be in [1, {processing.HEIGHT}], got {resolution}")
  if split_scheme not in SPLIT_SCHEMES:
    raise ValueError(f"unknown split_scheme {split_scheme!r}; use one of {SPLIT_SCHEMES}")
  if depth_type not in DEPTH_TYPES:
    raise ValueError(f"unknown depth_type {depth_type!r}; use one of {DEPTH_TYPES}")
  return HypersimConfig(
      name=config_name(resolution, split_scheme, depth_type), resolution=resolution,
      split_scheme=split_scheme, depth_type=depth_type,
      description=f"Short side resized to {resolution} px, center crop "
                  f"{resolution}x{resolution}; {split_scheme} split; {depth_type} depth.")


_PREDEFINED = [_make_config(r) for r in (256, 128, 64)] + [
    _make_config(256, scheme, depth)
    for scheme in SPLIT_SCHEMES for depth in DEPTH_TYPES
    if (scheme, depth) != (DEFAULT_SPLIT_SCHEME, DEFAULT_DEPTH_TYPE)]


def hypersim_config(resolution: int, split_scheme: str = DEFAULT_SPLIT_SCHEME,
                    depth_type: str = DEFAULT_DEPTH_TYPE) -> HypersimConfig:
  """Config named `config_name(...)`; the predefined object where there is one."""
  for config in _PREDEFINED:
    if (config.resolution, config.split_scheme, config.depth_type) == (
        resolution, split_scheme, depth_type):
      return config
  return _make_config(resolution, split_scheme, depth_type)


@dataclasses.dataclass
class _FrameResult:
  frame: metadata.FrameId
  example: dict | None = None
  reason: str | None = None
  message: str | None = None


@functools.lru_cache(maxsize=64)
def _planar_factor(scene: str, resolution: int) -> np.ndarray:
  try:
    m = metadata.cam_from_uv(scene)
  except KeyError as e:
    raise processing.FrameError(
        processing.NO_CAMERA, f"{scene}: not in metadata_camera_parameters.csv") from e
  return processing.planar_depth_factor(resolution, m)


def planar_depth(distance: np.ndarray, scene: str, resolution: int) -> np.ndarray:
  """Stored distance [S,S] -> planar (z) depth with the scene's camera.

  planar = distance * |ray_z| / |ray|, ray = M_cam_from_uv @ (u, v, 1) through
  the centre of the raw pixel each stored pixel samples (HyperSim's conversion,
  ml-hypersim issue #9 and contrib/mikeroberts3000; for the usual camera
  f / sqrt(X^2 + Y^2 + f^2), f = 886.81 px). NaN stays NaN.
  """
  return (distance * _planar_factor(scene, resolution)).astype(np.float32)


def _process(root: str, frame: metadata.FrameId, resolution: int,
             depth_type: str = DEFAULT_DEPTH_TYPE) -> _FrameResult:
  """Reads and processes one frame; errors become a skip reason, never raise."""
  scene, camera, index = frame
  try:
    raw = processing.read_frame(root, scene, camera, index)
    arrays = processing.process_frame(raw, resolution)
    processing.check_valid_depth(arrays["depth"], f"{scene} {camera} {index}")
    if depth_type == "planar":
      arrays["depth"] = planar_depth(arrays["depth"], scene, resolution)
  except processing.FrameError as e:
    return _FrameResult(frame, reason=e.reason, message=str(e))
  except Exception as e:  # pylint: disable=broad-except
    return _FrameResult(frame, reason="processing_error",
                        message=f"{scene} {camera} {index}: {type(e).__name__}: {e}")
  return _FrameResult(frame, example={
      "image": arrays["image"],
      "depth": arrays["depth"],
      "semantic": arrays["semantic"],
      "scene": scene,
      "camera": camera,
      "frame": np.int32(index),
  })


def _process_job(job) -> _FrameResult:
  frame, root, resolution, depth_type = job
  return _process(root, frame, resolution, depth_type)


def map_bounded(fn, jobs: list, workers: int, pool: str = "process") -> Iterator:
  """fn over jobs, results in order, on `workers` processes or threads with at
  most 2 * workers jobs submitted and not yet consumed (bounded memory).

  Processes are started with `spawn` (fresh interpreters: safe in a parent that
  runs JAX threads, where fork is not); `fn` must be importable.
  """
  if pool == "process":
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
  else:
    executor = concurrent.futures.ThreadPoolExecutor(workers)
  with executor:
    pending = collections.deque()
    it = iter(jobs)
    for job in it:
      pending.append(executor.submit(fn, job))
      if len(pending) >= 2 * workers:
        break
    for job in it:
      yield pending.popleft().result()
      pending.append(executor.submit(fn, job))
    while pending:
      yield pending.popleft().result()


def find_frames(root: str | os.PathLike, frames: tuple[metadata.FrameId, ...]
                ) -> tuple[list[metadata.FrameId], collections.Counter]:
  """Listed frames whose four files are all present under `root`.

  Returns (present frames in list order, counts): counts['absent'] = frames
  with no color file (scene/camera not downloaded), counts['missing_file'] =
  frames with a color file but a missing geometry file. Each camera folder is
  listed once, so this is cheap even for the full data set.
  """
  root = os.fspath(root)
  try:
    scenes_here = set(os.listdir(root))
  except OSError:
    scenes_here = set()
  listings: dict[str, set[str]] = {}

  def listing(path: str) -> set[str]:
    if path not in listings:
      try:
        listings[path] = set(os.listdir(path))
      except OSError:
        listings[path] = set()
    return listings[path]

  present, counts = [], collections.Counter()
  for scene, camera, index in frames:
    if scene not in scenes_here:
      counts["absent"] += 1
      continue
    images = os.path.join(root, scene, "images")
    prefix = f"frame.{index:04d}."
    if prefix + "color.hdf5" not in listing(
        os.path.join(images, f"scene_{camera}_final_hdf5")):
      counts["absent"] += 1
      continue
    geometry = listing(os.path.join(images, f"scene_{camera}_geometry_hdf5"))
    if all(f"{prefix}{k}.hdf5" in geometry for k in processing.FRAME_FILES[1:]):
      present.append((scene, camera, index))
    else:
      counts[processing.MISSING_FILE] += 1
  return present, counts


class RecordWriter(tfds_writer.ExampleWriter):
  """Writes each shard as an array_record file with the given writer `options`
  (TFDS's own writer fixes them to "group_size:1", array_record's zstd level 3)."""

  def __init__(self, options: str):
    super().__init__(tfds.core.FileFormat.ARRAY_RECORD)
    self.options = options

  def write(self, path, examples) -> None:
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), self.options)
    try:
      for _, serialized in examples:
        writer.write(serialized)
    finally:
      writer.close()


class Builder(tfds.core.GeneratorBasedBuilder):
  """HyperSim with the Semantic-MD (or official) split, from raw HDF5 files in manual_dir."""

  # Bumped whenever the stored examples change for the same config. A data set
  # built by another version is never read in its place: TFDS looks only in
  # DATA_DIR/hypersim/<config>/<VERSION>/, and `smd_jax.data.datasets` reports
  # (or, for the procedural demo, rebuilds) an other-version build it finds.
  VERSION = tfds.core.Version("3.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: HyperSim tone map, short-side resize (antialiased "
               "bilinear RGB, nearest depth/labels), center crop; the Semantic-MD scene "
               "split; depth_meters (Euclidean distance) with NaN kept; frames with a "
               "missing, unreadable or malformed file skipped. Later code wrote the "
               "changes of 2.0.0 under this same number, so a 1.0.0 folder may hold "
               "either content.",
      "2.0.0": "Frames of the known-broken trajectories (metadata.KNOWN_BROKEN: "
               "ai_003_001 cam_00, ai_004_009 cam_01, ai_038_007 cam_00; 99 frames of the "
               "paper's train list, none of its val/test) and frames with no finite "
               "positive depth in the crop are not written. Configs split_scheme "
               "(semantic_md, official) and depth_type (distance, planar); `res{N}` stays "
               "the paper's semantic_md split with distance depth. Skip counts per reason "
               "and absent frames in metadata.json.",
      "3.0.0": "Image, depth and labels stored as raw bytes (Tensor features with "
               "Encoding.BYTES: uint8 [S,S,3], float32 [S,S], int16 [S,S]) instead of a PNG "
               "image and zlib-compressed depth and labels: decoding is a copy (the input "
               "pipeline was bound by PNG and zlib decoding), for 1.2-1.4x the disk space "
               "after array_record's zstd. Same values as 2.0.0.",
      "3.1.0": "array_record shards written uncompressed (writer options "
               "'group_size:1,uncompressed') instead of with array_record's zstd: "
               "decompression bounded the input pipeline at 256 px; 6-7x the disk "
               "space of 3.0.0. Same examples as 3.0.0. `record_compression='zstd'` "
               "(tfds_hypersim.build --record_compression zstd) writes zstd shards "
               "again, where disk matters more than reading speed.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the raw HyperSim scene folders (https://github.com/apple/ml-hypersim)
  directly in `manual_dir`, e.g.:

    manual_dir/ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5
    manual_dir/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5
    manual_dir/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.semantic.hdf5
    manual_dir/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.render_entity_id.hdf5

  `python -m tfds_hypersim.download --split semantic_md --out manual_dir` fetches
  exactly these files (see docs/data.md). `manual_dir` must be a local (or
  mounted) folder. Any subset of scenes works: each split keeps the frames of
  its list that are present, and a split with none is left out. Without a
  download, `python -m tfds_hypersim.synthetic --out DIR` writes procedural
  scenes in the same layout.
  """
  BUILDER_CONFIGS = _PREDEFINED

  def __init__(self, *, file_format: str | None = None,
               num_workers: int | None = None, pool: str = "thread",
               record_compression: str = DEFAULT_RECORD_COMPRESSION, **kwargs):
    """As tfds.core.GeneratorBasedBuilder, with array_record as default format.

    Args:
      file_format: TFDS file format; default "array_record" (random access for
        `as_data_source` and grain).
      num_workers: frames decoded in parallel while generating; default
        cpu count (at most 8). The output does not depend on it.
      pool: "thread" (default: measured faster on the 2-core development
        machine, docs/data.md) or "process" (fresh `spawn` worker processes,
        safe next to JAX; h5py serialises HDF5 reads across threads, so on
        many cores processes may scale further; each costs seconds to start).
        Either way at most 2 * num_workers frames are in flight.
      record_compression: how array_record shards are compressed, a key of
        `RECORD_COMPRESSION`: "none" (default, fastest to read) or "zstd"
        (6-7x smaller). The examples and how they are read do not depend on it.
      **kwargs: passed to tfds.core.GeneratorBasedBuilder (data_dir, config, ...).
    """
    super().__init__(file_format=file_format or "array_record", **kwargs)
    if pool not in ("process", "thread"):
      raise ValueError(f"pool must be 'process' or 'thread', got {pool!r}")
    if record_compression not in RECORD_COMPRESSION:
      raise ValueError(f"record_compression must be one of {sorted(RECORD_COMPRESSION)}, "
                       f"got {record_compression!r}")
    self._record_options = RECORD_COMPRESSION[record_compression]
    self._num_workers = num_workers or min(8, os.cpu_count() or 1)
    self._pool = pool
    # split -> Counter of skipped frames by reason, filled while generating.
    self.skipped: dict[str, collections.Counter] = {}
    # split -> listed frames not in manual_dir (not downloaded; not an error).
    self.absent: dict[str, int] = {}

  def _create_builder_config(self, builder_config, version):
    # TFDS only accepts the predefined config *object* under a predefined name;
    # also accept an equal HypersimConfig made by the caller.
    if isinstance(builder_config, HypersimConfig):
      predefined = self.builder_configs.get(builder_config.name)
      if predefined is not None and builder_config is not predefined:
        fields = ("resolution", "split_scheme", "depth_type")
        if any(getattr(builder_config, f) != getattr(predefined, f) for f in fields):
          raise ValueError(
              f"config name {builder_config.name!r} is predefined as "
              f"{ {f: getattr(predefined, f) for f in fields} }, got "
              f"{ {f: getattr(builder_config, f) for f in fields} }; use another name")
        builder_config = predefined
    return super()._create_builder_config(builder_config, version)

  def _example_writer(self) -> tfds_writer.ExampleWriter:
    # TFDS's hook for a custom writer; other file formats keep TFDS's own.
    if self.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      return super()._example_writer()
    return RecordWriter(self._record_options)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.resolution
    depth_doc = ("Planar depth (z along the optical axis) in metres" if
                 self.builder_config.depth_type == "planar" else
                 "Euclidean distance to the camera centre in metres")
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw bytes (STORAGE_ENCODING): decoding is a copy, not PNG / zlib.
            "image": tfds.features.Tensor(
                shape=(s, s, 3), dtype=np.uint8, encoding=STORAGE_ENCODING,
                doc="Tone-mapped sRGB-like LDR image."),
            "depth": tfds.features.Tensor(
                shape=(s, s), dtype=np.float32, encoding=STORAGE_ENCODING,
                doc=f"{depth_doc}; NaN = no geometry."),
            "semantic": tfds.features.Tensor(
                shape=(s, s), dtype=np.int16, encoding=STORAGE_ENCODING,
                doc="NYU40 label 1..40; -1 = unlabelled."),
            "scene": tfds.features.Text(doc="HyperSim scene, e.g. ai_001_001."),
            "camera": tfds.features.Text(doc="Camera trajectory, e.g. cam_00."),
            "frame": tfds.features.Scalar(dtype=np.int32, doc="Frame index."),
        }),
        supervised_keys=("image", "depth"),
        homepage="https://github.com/apple/ml-hypersim",
        # "skipped": {split: {reason: count}}, "absent": {split: count}; written
        # to metadata.json in the data set folder, read back by `info.metadata`.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    scheme = self.builder_config.split_scheme
    generators = {}
    for split in metadata.SPLIT_FILES:
      listed = metadata.split_frames(split, scheme)
      found, counts = find_frames(root, listed)
      present = [f for f in found if not metadata.is_known_broken(f[0], f[1])]
      counts[KNOWN_BROKEN] = len(found) - len(present)
      self.absent[split] = counts.pop("absent", 0)
      self.skipped[split] = collections.Counter({k: v for k, v in counts.items() if v})
      logging.info("hypersim %s (%s): %d of %d listed frames present in %s "
                   "(%d absent, %d with missing files, %d in known-broken trajectories)",
                   split, scheme, len(present), len(listed), root, self.absent[split],
                   counts[processing.MISSING_FILE], counts[KNOWN_BROKEN])
      if present:
        generators[split] = self._generate_examples(root, split, present)
      else:
        logging.warning("hypersim: no %s frame present in %s; split left out",
                        split, root)
    self._record_skips()
    if not generators:
      raise FileNotFoundError(
          f"No frame of the {scheme} split lists found in {root}.\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return generators

  def _record_skips(self) -> None:
    """Skip counts into the data set's metadata (metadata.json after the build)."""
    self.info.metadata["skipped"] = {
        split: dict(sorted(c.items())) for split, c in self.skipped.items()}
    self.info.metadata["absent"] = dict(self.absent)

  def _generate_examples(self, root: str, split: str,
                         frames: list[metadata.FrameId]
                         ) -> Iterator[tuple[str, dict]]:
    """Yields (key, example) one frame at a time; broken frames are skipped."""
    config = self.builder_config
    skipped = self.skipped.setdefault(split, collections.Counter())
    written = 0
    for result in self._map_frames(root, frames, config.resolution, config.depth_type):
      if result.example is None:
        skipped[result.reason] += 1
        logging.warning("hypersim %s: skipping frame (%s)", split, result.message)
        continue
      written += 1
      scene, camera, index = result.frame
      yield f"{scene}/{camera}/{index:04d}", result.example
    self._record_skips()
    log = logging.warning if skipped else logging.info
    log("hypersim %s: wrote %d frames, skipped %d %s", split, written,
        sum(skipped.values()), json.dumps(dict(sorted(skipped.items()))))

  def _map_frames(self, root: str, frames: list[metadata.FrameId], resolution: int,
                  depth_type: str) -> Iterator[_FrameResult]:
    """`_process` over frames in order, at most 2 * num_workers in flight."""
    args = (root, resolution, depth_type)
    if self._num_workers <= 1 or len(frames) <= 1:
      for frame in frames:
        yield _process(root, frame, resolution, depth_type)
      return
    yield from map_bounded(_process_job, [(frame, *args) for frame in frames],
                           self._num_workers, self._pool)
