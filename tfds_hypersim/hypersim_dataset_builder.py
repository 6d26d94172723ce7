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
import io
import os
from collections.abc import Iterator

from absl import logging
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from tfds_hypersim import metadata
from tfds_hypersim import processing

_DESCRIPTION = """
HyperSim (Roberts et al., ICCV 2021) photorealistic synthetic indoor frames,
prepared as in Semantic-MD (Charyyev et al.): HyperSim's tone map to LDR RGB,
short side resized to the config's resolution (antialiased bilinear for RGB,
nearest for depth and labels), center crop to a square. `depth` is HyperSim's
depth_meters (Euclidean distance to the camera centre, metres; NaN where there
is no geometry); `semantic` the NYU40 label (1..40, -1 unlabelled). Splits are
the paper's scene split (train/val/test lists), restricted to the frames found
in the manual directory; broken or incomplete frames are skipped.
"""


@dataclasses.dataclass
class HypersimConfig(tfds.core.BuilderConfig):
  """Config of the `hypersim` builder.

  Attributes:
    resolution: side in pixels of the stored square examples.
  """

  resolution: int = 256


def _make_config(resolution: int) -> HypersimConfig:
  if not 1 <= resolution <= processing.HEIGHT:
    raise ValueError(f"resolution must be in [1, {processing.HEIGHT}], got {resolution}")
  return HypersimConfig(
      name=f"res{resolution}", resolution=resolution,
      description=f"Short side resized to {resolution} px, center crop "
                  f"{resolution}x{resolution}.")


_PREDEFINED = [_make_config(r) for r in (256, 128, 64)]


def hypersim_config(resolution: int) -> HypersimConfig:
  """Config named f"res{resolution}"; the predefined object for 256/128/64."""
  for config in _PREDEFINED:
    if config.resolution == resolution:
      return config
  return _make_config(resolution)


@dataclasses.dataclass
class _FrameResult:
  frame: metadata.FrameId
  example: dict | None = None
  reason: str | None = None
  message: str | None = None


def _encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  PIL.Image.fromarray(image).save(buf, format="png")
  return buf.getvalue()


def _process(root: str, frame: metadata.FrameId, resolution: int) -> _FrameResult:
  """Reads and processes one frame; errors become a skip reason, never raise."""
  scene, camera, index = frame
  try:
    raw = processing.read_frame(root, scene, camera, index)
    arrays = processing.process_frame(raw, resolution)
  except processing.FrameError as e:
    return _FrameResult(frame, reason=e.reason, message=str(e))
  except Exception as e:  # pylint: disable=broad-except
    return _FrameResult(frame, reason="processing_error",
                        message=f"{scene} {camera} {index}: {type(e).__name__}: {e}")
  return _FrameResult(frame, example={
      "image": _encode_png(arrays["image"]),
      "depth": arrays["depth"],
      "semantic": arrays["semantic"],
      "scene": scene,
      "camera": camera,
      "frame": np.int32(index),
  })


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


class Builder(tfds.core.GeneratorBasedBuilder):
  """HyperSim with the Semantic-MD split, from raw HDF5 files in manual_dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: HyperSim tone map, short-side resize "
               "(antialiased bilinear RGB, nearest depth/labels), center crop; "
               "Semantic-MD scene split; depth is Euclidean distance with NaN kept.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the raw HyperSim scene folders (https://github.com/apple/ml-hypersim)
  directly in `manual_dir`, e.g.:

    manual_dir/ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5
    manual_dir/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5
    manual_dir/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.semantic.hdf5
    manual_dir/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.render_entity_id.hdf5

  `manual_dir` must be a local (or mounted) folder. Only these four files per
  frame are read. Any subset of scenes works: each
  split keeps the frames of its list that are present, and a split with none
  is left out. Without a download, `python -m tfds_hypersim.synthetic --out DIR`
  writes procedural scenes in the same layout.
  """
  BUILDER_CONFIGS = _PREDEFINED

  def __init__(self, *, file_format: str | None = None,
               num_workers: int | None = None, **kwargs):
    """As tfds.core.GeneratorBasedBuilder, with array_record as default format.

    Args:
      file_format: TFDS file format; default "array_record" (random access for
        `as_data_source` and grain).
      num_workers: threads decoding frames while generating; default
        min(4, cpu count). The output does not depend on it.
      **kwargs: passed to tfds.core.GeneratorBasedBuilder (data_dir, config, ...).
    """
    super().__init__(file_format=file_format or "array_record", **kwargs)
    self._num_workers = num_workers or min(4, os.cpu_count() or 1)
    # split -> Counter of skipped frames by reason, filled while generating.
    self.skipped: dict[str, collections.Counter] = {}

  def _create_builder_config(self, builder_config, version):
    # TFDS only accepts the predefined config *object* under a predefined name;
    # also accept an equal HypersimConfig made by the caller.
    if isinstance(builder_config, HypersimConfig):
      predefined = self.builder_configs.get(builder_config.name)
      if predefined is not None and builder_config is not predefined:
        if builder_config.resolution != predefined.resolution:
          raise ValueError(
              f"config name {builder_config.name!r} is predefined with resolution "
              f"{predefined.resolution}, got {builder_config.resolution}; use "
              "another name")
        builder_config = predefined
    return super()._create_builder_config(builder_config, version)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.resolution
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), dtype=np.uint8,
                                         encoding_format="png",
                                         doc="Tone-mapped sRGB-like LDR image."),
            "depth": tfds.features.Tensor(
                shape=(s, s), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB,
                doc="Euclidean distance to the camera centre in metres; NaN = no geometry."),
            "semantic": tfds.features.Tensor(
                shape=(s, s), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB,
                doc="NYU40 label 1..40; -1 = unlabelled."),
            "scene": tfds.features.Text(doc="HyperSim scene, e.g. ai_001_001."),
            "camera": tfds.features.Text(doc="Camera trajectory, e.g. cam_00."),
            "frame": tfds.features.Scalar(dtype=np.int32, doc="Frame index."),
        }),
        supervised_keys=("image", "depth"),
        homepage="https://github.com/apple/ml-hypersim",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    generators = {}
    for split in metadata.SPLIT_FILES:
      listed = metadata.split_frames(split)
      present, counts = find_frames(root, listed)
      self.skipped[split] = collections.Counter(
          {k: v for k, v in counts.items() if k != "absent"})
      logging.info("hypersim %s: %d of %d listed frames present in %s "
                   "(%d absent, %d with missing files)", split, len(present),
                   len(listed), root, counts["absent"], counts[processing.MISSING_FILE])
      if present:
        generators[split] = self._generate_examples(root, split, present)
      else:
        logging.warning("hypersim: no %s frame present in %s; split left out",
                        split, root)
    if not generators:
      raise FileNotFoundError(
          f"No frame of the Semantic-MD split lists found in {root}.\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return generators

  def _generate_examples(self, root: str, split: str,
                         frames: list[metadata.FrameId]
                         ) -> Iterator[tuple[str, dict]]:
    """Yields (key, example) one frame at a time; broken frames are skipped."""
    resolution = self.builder_config.resolution
    skipped = self.skipped.setdefault(split, collections.Counter())
    written = 0
    for result in self._map_frames(root, frames, resolution):
      if result.example is None:
        skipped[result.reason] += 1
        logging.warning("hypersim %s: skipping frame (%s)", split, result.message)
        continue
      written += 1
      scene, camera, index = result.frame
      yield f"{scene}/{camera}/{index:04d}", result.example
    log = logging.warning if skipped else logging.info
    log("hypersim %s: wrote %d frames, skipped %d %s", split, written,
        sum(skipped.values()), dict(sorted(skipped.items())))

  def _map_frames(self, root: str, frames: list[metadata.FrameId],
                  resolution: int) -> Iterator[_FrameResult]:
    """`_process` over frames in order, on a thread pool with a bounded queue.

    Threads suffice: the numpy work (tone map, resize) and PNG encoding release
    the GIL for most of their time; processes would need pickling and are
    fragile under a parent running JAX.
    """
    if self._num_workers <= 1:
      for frame in frames:
        yield _process(root, frame, resolution)
      return
    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      pending = collections.deque()
      it = iter(frames)
      for frame in it:
        pending.append(pool.submit(_process, root, frame, resolution))
        if len(pending) >= 2 * self._num_workers:
          break
      for frame in it:
        yield pending.popleft().result()
        pending.append(pool.submit(_process, root, frame, resolution))
      while pending:
        yield pending.popleft().result()
