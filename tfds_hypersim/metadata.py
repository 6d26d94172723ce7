"""Package data: split lists, NYU40 label table, per-scene camera matrices.

All files are data copied from public repositories; see PROVENANCE.txt.
"""

from __future__ import annotations

import csv
import functools
import io

import importlib_resources
import numpy as np

# TFDS split name -> the paper's split list (lines "ai_001_001 cam_00 0000").
SPLIT_FILES = {
    "train": "semantic_md_split_train.txt",
    "validation": "semantic_md_split_val.txt",
    "test": "semantic_md_split_test.txt",
}
# Split schemes: "semantic_md" = the paper's lists above (default); "official" =
# HyperSim's v1 scene split, `metadata_images_split_scene_v1.csv`, public frames
# only (included_in_public_release == True), split_partition_name train/val/test.
SPLIT_SCHEMES = ("semantic_md", "official")
OFFICIAL_SPLIT_CSV = "metadata_images_split_scene_v1.csv"
_OFFICIAL_PARTITION = {"train": "train", "validation": "val", "test": "test"}

# Camera trajectories known to be broken in HyperSim's public release, skipped by
# the builder (reason "known_broken") in every split scheme. Source per entry:
#   ml-hypersim issue #22 "Broken Scenes" (github.com/apple/ml-hypersim/issues/22):
#     ai_004_009 cam_01 -- "completely broken images", a light missing, textures wrong;
#     ai_038_007 cam_00 -- textures missing, floating rectangles labelled `person`.
#   ai_003_001 cam_00 is excluded together with ai_004_009 cam_01 by several
#     downstream HyperSim loaders (e.g. DUSt3R-family training code, which cites the
#     same issue thread); not stated in the first post.
# Each of the three holds 33 frames of the paper's train list (none in val/test).
# Frames missing from the zips (e.g. ai_006_001 cam_00 frame 53's geometry files,
# ml-hypersim issue #7) need no entry: they are skipped as "missing_file".
KNOWN_BROKEN = {
    ("ai_004_009", "cam_01"): "ml-hypersim#22: broken renders (missing light, wrong textures)",
    ("ai_038_007", "cam_00"): "ml-hypersim#22: missing textures, geometry labelled person",
    ("ai_003_001", "cam_00"): "corrupted renders; excluded by downstream loaders (ml-hypersim#22 thread)",
}

FrameId = tuple[str, str, int]  # (scene, camera, frame), e.g. ("ai_001_001", "cam_00", 0)


def _read_text(*parts: str) -> str:
  path = importlib_resources.files("tfds_hypersim")
  for p in parts:
    path = path / p
  return path.read_text(encoding="utf-8")


def _check_split(split: str, scheme: str) -> None:
  if split not in SPLIT_FILES:
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_FILES)}")
  if scheme not in SPLIT_SCHEMES:
    raise ValueError(f"unknown split scheme {scheme!r}; expected one of {list(SPLIT_SCHEMES)}")


@functools.cache
def _official_frames() -> dict[str, tuple[FrameId, ...]]:
  frames = {split: [] for split in SPLIT_FILES}
  by_partition = {v: k for k, v in _OFFICIAL_PARTITION.items()}
  for row in csv.DictReader(io.StringIO(_read_text(OFFICIAL_SPLIT_CSV))):
    if row["included_in_public_release"] != "True":
      continue
    split = by_partition.get(row["split_partition_name"])
    if split is not None:
      frames[split].append((row["scene_name"], row["camera_name"], int(row["frame_id"])))
  return {k: tuple(v) for k, v in frames.items()}


@functools.cache
def split_frames(split: str, scheme: str = "semantic_md") -> tuple[FrameId, ...]:
  """Frames of a TFDS split ('train', 'validation', 'test') in a split scheme, in
  list order: the paper's lists ("semantic_md") or HyperSim's public v1 split
  ("official")."""
  _check_split(split, scheme)
  if scheme == "official":
    return _official_frames()[split]
  frames = []
  for line in _read_text("splits", SPLIT_FILES[split]).splitlines():
    if not line.strip():
      continue
    scene, camera, frame = line.split()
    frames.append((scene, camera, int(frame)))
  return tuple(frames)


def is_known_broken(scene: str, camera: str) -> bool:
  """True for the camera trajectories listed in KNOWN_BROKEN."""
  return (scene, camera) in KNOWN_BROKEN


@functools.cache
def label_names() -> dict[int, str]:
  """NYU40 id (1..40) -> name, from semantic_label_descs.csv."""
  text = _read_text("semantic_label_descs.csv")
  rows = csv.DictReader(io.StringIO(text), skipinitialspace=True)
  out = {}
  for row in rows:
    row = {k.strip(): v.strip() for k, v in row.items()}
    out[int(row["semantic_id"])] = row["semantic_name"]
  return out


@functools.cache
def label_colors() -> np.ndarray:
  """[41, 3] uint8 palette; row k is the NYU40 colour of id k, row 0 black."""
  text = _read_text("semantic_label_descs.csv")
  palette = np.zeros((41, 3), np.uint8)
  for row in csv.DictReader(io.StringIO(text), skipinitialspace=True):
    row = {k.strip(): v.strip() for k, v in row.items()}
    palette[int(row["semantic_id"])] = [int(row[f"semantic_color_{c}"])
                                        for c in "rgb"]
  return palette


@functools.cache
def _cam_from_uv_table() -> dict[str, np.ndarray]:
  text = _read_text("metadata_camera_parameters.csv")
  out = {}
  for row in csv.DictReader(io.StringIO(text)):
    m = [float(row[f"M_cam_from_uv_{r}{c}"]) for r in range(3) for c in range(3)]
    out[row["scene_name"]] = np.asarray(m, np.float64).reshape(3, 3)
  return out


def cam_from_uv(scene: str) -> np.ndarray:
  """[3,3] HyperSim M_cam_from_uv of a scene (float64).

  Maps (u, v, 1), u = (j + 0.5) / W * 2 - 1 and v = 1 - (i + 0.5) / H * 2 for
  pixel (i, j), to a camera-space ray (x right, y up, camera looking along -z).
  For most scenes it is diag(tan(fov/2), tan(fov/2) * H / W, -1), i.e. a
  centred pinhole with f = 512 / tan(30 deg) = 886.81 px.
  """
  table = _cam_from_uv_table()
  if scene not in table:
    raise KeyError(f"no camera parameters for scene {scene!r}")
  return table[scene]
