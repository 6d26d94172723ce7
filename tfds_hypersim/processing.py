"""Pure numpy processing of raw HyperSim frames (no TFDS, no TensorFlow).

A raw HyperSim frame is four HDF5 files, each holding one dataset named
`dataset` (HyperSim's layout, Roberts et al. 2021; docs/data.md):

  scene/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5               [768,1024,3] float16 HDR
  scene/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5     [768,1024] float16, NaN = no geometry
  scene/images/scene_cam_XX_geometry_hdf5/frame.IIII.semantic.hdf5         [768,1024] int16, -1 or NYU40 1..40
  scene/images/scene_cam_XX_geometry_hdf5/frame.IIII.render_entity_id.hdf5 [768,1024] int16, -1 = no geometry

`process_frame` turns one into the stored example: tone-mapped uint8 RGB,
depth (metres, Euclidean distance to the camera centre, NaN kept) and
semantic labels, resized so the short side equals the resolution and
center-cropped to a square.

Resampling conventions:
  * RGB: bilinear *with antialiasing* -- a triangle filter whose support is
    widened by the downscale factor, as PIL's BILINEAR `Image.resize` on float
    images (tested against it) and `jax.image.resize(..., "linear",
    antialias=True)`. HyperSim frames are downscaled 3x (256 px) to
    12x (64 px); plain 2-tap bilinear would alias textures badly. It runs on the
    float tone-mapped image; quantisation to uint8 happens afterwards.
  * depth / semantic: nearest neighbour, output pixel i samples input pixel
    floor((i + 0.5) * in / out) (half-pixel centres; for 768 -> 256 this is the
    centre pixel of each 3x3 block). Labels are never blended and NaN depth
    stays NaN.
"""

from __future__ import annotations

import dataclasses
import functools
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
# ... by `check_valid_depth` and the builder:
NO_VALID_DEPTH = "no_valid_depth"
NO_CAMERA = "no_camera_parameters"


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


@functools.cache
def _float16_table() -> np.ndarray:
  """float32 value of every float16 bit pattern, indexed by the uint16 bits."""
  bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
  return bits.view(np.float16).astype(np.float32)


@functools.cache
def _brightness_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  table = _float16_table()
  with np.errstate(invalid="ignore"):
    return tuple(table * np.float32(w) for w in (0.3, 0.59, 0.11))


def _tonemap_scale(brightness: np.ndarray) -> float:
  b = brightness[np.isfinite(brightness)]
  if b.size == 0:
    return 1.0
  p = float(np.percentile(b, _PERCENTILE))
  return 0.0 if p < _DARK_THRESHOLD else _BRIGHTNESS_TARGET**_INV_GAMMA / p


def _tonemap_curve(c: np.ndarray, scale: float) -> np.ndarray:
  """clip(max(scale * c, 0) ** (1/2.2), 0, 1) in float32; NaN -> 0."""
  with np.errstate(invalid="ignore"):
    rgb = np.multiply(c, np.float32(scale), dtype=np.float32)
    np.maximum(rgb, 0.0, out=rgb)
    np.power(rgb, np.float32(_GAMMA), out=rgb)
    np.minimum(rgb, 1.0, out=rgb)
  return np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0)


def tonemap(color: np.ndarray, entity: np.ndarray) -> np.ndarray:
  """HyperSim's tone map: linear HDR [H,W,3] -> display RGB float32 in [0,1].

  valid = entity != -1; brightness = 0.3R + 0.59G + 0.11B; p = 90th percentile
  (numpy's default linear interpolation) of brightness over valid pixels;
  scale = 1 if no valid pixel, 0 if p < 1e-4, else 0.8**2.2 / p;
  rgb = clip(max(scale * c, 0) ** (1/2.2), 0, 1). Arithmetic in float32.

  Non-finite colour values (not expected in HyperSim) are left out of the
  percentile and become 0 (NaN, -inf) or 1 (+inf); for finite input this is
  exactly the definition above. float16 input (HyperSim's) goes through
  per-bit-pattern lookup tables, bitwise equal to the float32 arithmetic.
  """
  color = np.asarray(color)
  valid = np.asarray(entity) != -1
  if color.dtype == np.float16:
    bits = color.view(np.uint16)
    # Same float32 products/sums as below, looked up instead of converted.
    r, g, b = _brightness_tables()
    brightness = r[bits[..., 0]]
    brightness += g[bits[..., 1]]
    brightness += b[bits[..., 2]]
    scale = _tonemap_scale(brightness[valid])
    return _tonemap_curve(_float16_table(), scale)[bits]
  c = color.astype(np.float32)
  brightness = 0.3 * c[..., 0] + 0.59 * c[..., 1] + 0.11 * c[..., 2]
  return _tonemap_curve(c, _tonemap_scale(brightness[valid]))


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


def _banded(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense [out, in] filter weights -> (indices, weights), each [out, taps]."""
  nonzero = weights > 0
  taps = int(nonzero.sum(axis=1).max())
  start = np.minimum(nonzero.argmax(axis=1), weights.shape[1] - taps)
  idx = start[:, None] + np.arange(taps)[None, :]
  return idx, np.take_along_axis(weights, idx, axis=1)


def _filter_axis(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
  """Applies [out, in] weights along `axis` of float32 x.

  Done as a short sum of gathered slices (the filter is banded) rather than a
  matmul: as fast single-threaded, and independent of BLAS threading, which
  slows down badly on a busy machine.
  """
  idx, w = _banded(weights)
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = None
  for k in range(idx.shape[1]):
    term = np.take(x, idx[:, k], axis=axis)
    term *= w[:, k].reshape(shape)
    if out is None:
      out = term
    else:
      out += term
  return out


def _resize_axes(x: np.ndarray, out_hw: tuple[int, int], method: str,
                 rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
  """Resize of the leading two axes, computing only output `rows` x `cols`."""
  h, w = x.shape[:2]
  oh, ow = out_hw
  if method == "nearest":
    return x[_nearest_indices(h, oh)[rows]][:, _nearest_indices(w, ow)[cols]]
  if method != "bilinear":
    raise ValueError(f"unknown resize method {method!r}")
  x = np.asarray(x, np.float32)
  y = _filter_axis(x, _triangle_weights(h, oh)[rows], axis=0)
  return _filter_axis(y, _triangle_weights(w, ow)[cols], axis=1)


def resize(x: np.ndarray, out_hw: tuple[int, int], method: str) -> np.ndarray:
  """Resizes the two leading axes of `x` ([H,W] or [H,W,C]) to `out_hw`.

  method: "bilinear" (antialiased, float32 output) or "nearest" (dtype kept).
  """
  return _resize_axes(x, out_hw, method)


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


def resize_short_side_and_crop(x: np.ndarray, size: int, method: str) -> np.ndarray:
  """center_crop(resize_short_side(x, size, method), size), computing only the
  kept pixels (same values)."""
  h, w = x.shape[:2]
  oh, ow = short_side_shape(h, w, size)
  top, left = (oh - size) // 2, (ow - size) // 2
  return _resize_axes(x, (oh, ow), method, slice(top, top + size),
                      slice(left, left + size))


def check_valid_depth(depth: np.ndarray, where: str) -> None:
  """FrameError(NO_VALID_DEPTH) unless some depth value is finite and > 0."""
  d = np.asarray(depth)
  with np.errstate(invalid="ignore"):
    if not np.any(np.isfinite(d) & (d > 0)):
      raise FrameError(NO_VALID_DEPTH, f"{where}: no finite positive depth in the "
                       f"{d.shape[0]}x{d.shape[1]} crop")


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
  image = to_uint8(resize_short_side_and_crop(rgb, resolution, "bilinear"))
  depth = resize_short_side_and_crop(raw.depth, resolution, "nearest").astype(np.float32)
  depth = np.where(np.isfinite(depth), depth, np.float32(np.nan))
  semantic = clean_semantic(resize_short_side_and_crop(raw.semantic, resolution, "nearest"))
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
