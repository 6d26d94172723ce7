"""Pure numpy processing of raw HyperSim frames (no TFDS, no TensorFlow).

A raw HyperSim frame is four HDF5 files, each holding one dataset named
`dataset` (see DESIGN.md, "HyperSim facts the builder must honour"):

  scene/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5               [768,1024,3] float16 HDR
  scene/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5     [768,1024] float16, NaN = no geometry
  scene/images/scene_cam_XX_geometry_hdf5/frame.IIII.semantic.hdf5         [768,1024] int16, -1 or NYU40 1..40
  scene/images/scene_cam_XX_geometry_hdf5/frame.IIII.render_entity_id.hdf5 [768,1024] int16, -1 = no geometry

`process_frame` turns one into the stored example: tone-mapped uint8 RGB,
depth (metres, Euclidean distance to the camera centre, NaN kept) and
semantic labels, resized so the short side equals the resolution and
center-cropped to a square.

Resampling conventions (both match PIL's `Image.resize` for float images):
  * RGB: bilinear *with antialiasing* -- a triangle filter whose support is
    widened by the downscale factor (PIL's BILINEAR, `jax.image.resize(...,
    "linear", antialias=True)`). HyperSim frames are downscaled 3x (256 px) to
    12x (64 px); plain 2-tap bilinear would alias textures badly. It runs on the
    float tone-mapped image; quantisation to uint8 happens afterwards.
  * depth / semantic: nearest neighbour, output pixel i samples input pixel
    floor((i + 0.5) * in / out) (half-pixel centres; for 768 -> 256 this is the
    centre pixel of each 3x3 block). Labels are never blended and NaN depth
    stays NaN.
"""

from __future__ import annotations

import dataclasses
import os

import h5py
import numpy as np

HEIGHT = 768
WIDTH = 1024
NUM_CLASSES = 40  # NYU40 ids 1..40; -1 = unlabelled

# Tone-map constants as HyperSim defines them.
_GAMMA = 1.0 / 2.2
_INV_GAMMA = 2.2
_PERCENTILE = 90
_BRIGHTNESS_TARGET = 0.8
_DARK_THRESHOLD = 1e-4

# File suffixes (after `frame.IIII.`) of the four files that make up a frame.
COLOR = "color"
DEPTH = "depth_meters"
SEMANTIC = "semantic"
ENTITY = "render_entity_id"
FRAME_FILES = (COLOR, DEPTH, SEMANTIC, ENTITY)


class FrameError(Exception):
  """A raw frame that cannot be used; `reason` is a short key for counting."""

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason


# Skip reasons reported by `read_frame`.
MISSING_FILE = "missing_file"
CORRUPT_HDF5 = "corrupt_hdf5"
BAD_SHAPE = "bad_shape"
BAD_DTYPE = "bad_dtype"


def frame_path(root: str | os.PathLike, scene: str, camera: str, frame: int,
               kind: str) -> str:
  """Path of one raw file. `camera` is 'cam_XX', `kind` one of FRAME_FILES."""
  group = "final" if kind == COLOR else "geometry"
  return os.path.join(os.fspath(root), scene, "images",
                      f"scene_{camera}_{group}_hdf5",
                      f"frame.{frame:04d}.{kind}.hdf5")


@dataclasses.dataclass(frozen=True)
class RawFrame:
  """One raw HyperSim frame, arrays as stored (float16 / int16)."""
  color: np.ndarray     # [H,W,3] float16, linear HDR radiance
  depth: np.ndarray     # [H,W] float16, metres, NaN = no geometry
  semantic: np.ndarray  # [H,W] int16, -1 or 1..40
  entity: np.ndarray    # [H,W] int16, -1 = no geometry


def read_hdf5(path: str | os.PathLike) -> np.ndarray:
  """Reads the `dataset` of a HyperSim HDF5 file; raises FrameError."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FrameError(MISSING_FILE, path)
  try:
    with h5py.File(path, "r") as f:
      return f["dataset"][()]
  except Exception as e:  # h5py raises OSError, KeyError, ValueError, ...
    raise FrameError(CORRUPT_HDF5, f"{path}: {type(e).__name__}: {e}") from e


def read_frame(root: str | os.PathLike, scene: str, camera: str, frame: int,
               *, expected_hw: tuple[int, int] | None = (HEIGHT, WIDTH)
               ) -> RawFrame:
  """Reads and validates the four files of a frame.

  Raises FrameError (reason MISSING_FILE, CORRUPT_HDF5, BAD_SHAPE, BAD_DTYPE)
  if any file is absent, unreadable, or has the wrong shape/kind of dtype.
  `expected_hw=None` accepts any [H,W] shared by all four arrays.
  """
  arrays = {k: read_hdf5(frame_path(root, scene, camera, frame, k))
            for k in FRAME_FILES}
  color = arrays[COLOR]
  hw = tuple(expected_hw) if expected_hw is not None else color.shape[:2]
  expected = {COLOR: hw + (3,), DEPTH: hw, SEMANTIC: hw, ENTITY: hw}
  for k, shape in expected.items():
    if arrays[k].shape != shape:
      raise FrameError(BAD_SHAPE, f"{scene} {camera} {frame}: {k} has shape "
                       f"{arrays[k].shape}, expected {shape}")
  for k, kind in ((COLOR, "f"), (DEPTH, "f"), (SEMANTIC, "iu"), (ENTITY, "iu")):
    if arrays[k].dtype.kind not in kind:
      raise FrameError(BAD_DTYPE, f"{scene} {camera} {frame}: {k} has dtype "
                       f"{arrays[k].dtype}")
  return RawFrame(color=color, depth=arrays[DEPTH], semantic=arrays[SEMANTIC],
                  entity=arrays[ENTITY])


def tonemap(color: np.ndarray, entity: np.ndarray) -> np.ndarray:
  """HyperSim's tone map: linear HDR [H,W,3] -> display RGB float32 in [0,1].

  valid = entity != -1; brightness = 0.3R + 0.59G + 0.11B; p = 90th percentile
  (numpy's default linear interpolation) of brightness over valid pixels;
  scale = 1 if no valid pixel, 0 if p < 1e-4, else 0.8**2.2 / p;
  rgb = clip(max(scale * c, 0) ** (1/2.2), 0, 1).

  Non-finite colour values (not expected in HyperSim) are left out of the
  percentile and become 0 in the output; for finite input this is exactly the
  definition above.
  """
  c = np.asarray(color, np.float32)
  valid = np.asarray(entity) != -1
  brightness = 0.3 * c[..., 0] + 0.59 * c[..., 1] + 0.11 * c[..., 2]
  b = brightness[valid]
  b = b[np.isfinite(b)]
  if b.size == 0:
    scale = 1.0
  else:
    p = float(np.percentile(b, _PERCENTILE))
    scale = 0.0 if p < _DARK_THRESHOLD else _BRIGHTNESS_TARGET**_INV_GAMMA / p
  rgb = np.power(np.maximum(np.float32(scale) * c, 0.0), np.float32(_GAMMA))
  rgb = np.clip(rgb, 0.0, 1.0)
  return np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
  """Float RGB in [0,1] -> uint8 with round-half-to-even; out-of-range clipped."""
  return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """Output (H, W) when the short side becomes `size` (long side rounded)."""
  if height <= width:
    return size, max(size, int(np.floor(width * size / height + 0.5)))
  return max(size, int(np.floor(height * size / width + 0.5))), size


def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] antialiased bilinear weights (triangle filter, PIL convention)."""
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
  x = (np.arange(in_size, dtype=np.float64)[None, :] + 0.5
       - centers[:, None]) / filterscale
  w = np.maximum(1.0 - np.abs(x), 0.0)
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  idx = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size))
  return np.minimum(idx.astype(np.int64), in_size - 1)


def resize(x: np.ndarray, out_hw: tuple[int, int], method: str) -> np.ndarray:
  """Resizes the two leading axes of `x` ([H,W] or [H,W,C]) to `out_hw`.

  method: "bilinear" (antialiased, float32 output) or "nearest" (dtype kept).
  """
  h, w = x.shape[:2]
  oh, ow = out_hw
  if method == "nearest":
    return x[_nearest_indices(h, oh)][:, _nearest_indices(w, ow)]
  if method != "bilinear":
    raise ValueError(f"unknown resize method {method!r}")
  x = np.asarray(x, np.float32)
  wh = _triangle_weights(h, oh)
  ww = _triangle_weights(w, ow)
  y = np.tensordot(wh, x, axes=(1, 0))             # [oh, w, ...]
  y = np.moveaxis(np.tensordot(ww, y, axes=(1, 1)), 0, 1)  # [oh, ow, ...]
  return np.ascontiguousarray(y, dtype=np.float32)


def resize_short_side(x: np.ndarray, size: int, method: str) -> np.ndarray:
  """Resizes so that min(H, W) == size, keeping the aspect ratio."""
  return resize(x, short_side_shape(x.shape[0], x.shape[1], size), method)


def center_crop(x: np.ndarray, size: int) -> np.ndarray:
  """Central [size, size] window of the two leading axes (top/left floor)."""
  h, w = x.shape[:2]
  if h < size or w < size:
    raise ValueError(f"cannot crop {size}x{size} from {h}x{w}")
  top, left = (h - size) // 2, (w - size) // 2
  return x[top:top + size, left:left + size]


def clean_semantic(semantic: np.ndarray) -> np.ndarray:
  """int16 labels with anything outside NYU40 1..40 mapped to -1."""
  s = np.asarray(semantic)
  ok = (s >= 1) & (s <= NUM_CLASSES)
  return np.where(ok, s, -1).astype(np.int16)


def process_frame(raw: RawFrame, resolution: int) -> dict[str, np.ndarray]:
  """Raw frame -> stored example arrays at `resolution` x `resolution`.

  Returns image [S,S,3] uint8 (tone-mapped, antialiased bilinear on floats,
  then rounded), depth [S,S] float32 metres (nearest; NaN kept, +-inf -> NaN),
  semantic [S,S] int16 (nearest; -1 or 1..40).
  """
  rgb = tonemap(raw.color, raw.entity)
  image = to_uint8(center_crop(resize_short_side(rgb, resolution, "bilinear"),
                               resolution))
  depth = center_crop(resize_short_side(raw.depth, resolution, "nearest"),
                      resolution).astype(np.float32)
  depth = np.where(np.isfinite(depth), depth, np.float32(np.nan))
  semantic = clean_semantic(center_crop(
      resize_short_side(raw.semantic, resolution, "nearest"), resolution))
  return {"image": np.ascontiguousarray(image),
          "depth": np.ascontiguousarray(depth),
          "semantic": np.ascontiguousarray(semantic)}


FOCAL_PX = 886.81  # HyperSim's usual focal length (60 deg horizontal fov)


def default_cam_from_uv() -> np.ndarray:
  """M_cam_from_uv of a centred HyperSim pinhole with f = 886.81 px."""
  return np.diag([WIDTH / 2 / FOCAL_PX, HEIGHT / 2 / FOCAL_PX, -1.0])


def source_pixels(resolution: int, height: int = HEIGHT, width: int = WIDTH
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Raw (row, col) indices sampled by nearest resize + crop, each [S]."""
  oh, ow = short_side_shape(height, width, resolution)
  top, left = (oh - resolution) // 2, (ow - resolution) // 2
  rows = _nearest_indices(height, oh)[top:top + resolution]
  cols = _nearest_indices(width, ow)[left:left + resolution]
  return rows, cols


def planar_depth_factor(resolution: int,
                        m_cam_from_uv: np.ndarray | None = None) -> np.ndarray:
  """[S,S] float32 factor turning stored distance into planar depth.

  planar = distance * factor, factor = |ray_z| / |ray| for the camera ray
  through the centre of the raw pixel each stored pixel was sampled from
  (exact, since depth is resampled with nearest neighbour). With the default
  matrix this is f / sqrt(X^2 + Y^2 + f^2), X = j + 0.5 - 512, Y = i + 0.5 - 384.
  Use `metadata.cam_from_uv(scene)` for the exact per-scene camera.
  """
  m = default_cam_from_uv() if m_cam_from_uv is None else np.asarray(m_cam_from_uv, np.float64)
  rows, cols = source_pixels(resolution)
  u = (cols + 0.5) / WIDTH * 2.0 - 1.0
  v = 1.0 - (rows + 0.5) / HEIGHT * 2.0
  uv1 = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), axis=-1)
  ray = uv1 @ m.T
  return (np.abs(ray[..., 2]) / np.linalg.norm(ray, axis=-1)).astype(np.float32)
