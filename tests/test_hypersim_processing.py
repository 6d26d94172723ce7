"""Tests for tfds_hypersim.processing and tfds_hypersim.metadata (pure numpy)."""

import os

import h5py
import numpy as np
import PIL.Image
import pytest

from tfds_hypersim import metadata, processing


def _gray(values):
  """[1, n, 3] colour whose brightness equals `values` (0.3 + 0.59 + 0.11 = 1)."""
  v = np.asarray(values, np.float64)
  return np.repeat(v[None, :, None], 3, axis=2)


def _expected_rgb(c, scale):
  return np.clip(np.maximum(scale * np.asarray(c, np.float64), 0.0) ** (1 / 2.2), 0, 1)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_tonemap_hand_computed(dtype):
  # Valid grey levels ~0.1, 0.5, 0.2 (as stored in `dtype`); 90th percentile
  # with linear interpolation over 3 values: position 0.9 * 2 = 1.8.
  color = _gray([0.1, 0.5, 0.2, 100.0, -1.0]).astype(dtype)
  entity = np.array([[3, 7, 7, -1, -1]], np.int16)
  v = color[0, :3, 0].astype(np.float64)
  lo, mid, hi = np.sort(v)
  p = mid + 0.8 * (hi - mid)
  scale = 0.8**2.2 / p
  out = processing.tonemap(color, entity)
  assert out.dtype == np.float32 and out.shape == color.shape
  np.testing.assert_allclose(out, _expected_rgb(color, scale), rtol=2e-6, atol=2e-6)
  # The invalid bright pixel saturates, the negative one clamps to 0.
  np.testing.assert_array_equal(out[0, 3], 1.0)
  np.testing.assert_array_equal(out[0, 4], 0.0)


def test_tonemap_percentile_maps_to_target():
  # A pixel whose brightness is exactly the 90th percentile maps to 0.8.
  values = np.linspace(0.05, 1.0, 11)  # percentile position 9.0 -> values[9]
  color = _gray(values).astype(np.float32)
  entity = np.zeros((1, 11), np.int16)
  out = processing.tonemap(color, entity)
  np.testing.assert_allclose(out[0, 9], 0.8, rtol=1e-5)


def test_tonemap_coloured_brightness():
  color = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
  entity = np.zeros((1, 3), np.int16)
  b = np.sort([0.3, 0.59, 0.11])
  p = b[1] + 0.8 * (b[2] - b[1])  # position 1.8
  out = processing.tonemap(color, entity)
  np.testing.assert_allclose(out, _expected_rgb(color, 0.8**2.2 / p), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_tonemap_no_valid_pixel_uses_scale_one(dtype):
  color = _gray([0.0, 0.25, 0.7, 3.0]).astype(dtype)
  entity = np.full((1, 4), -1, np.int16)
  out = processing.tonemap(color, entity)
  np.testing.assert_allclose(out, _expected_rgb(color, 1.0), rtol=2e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_tonemap_dark_frame_is_black(dtype):
  color = _gray([1e-5, 2e-5, 5.0]).astype(dtype)  # p < 1e-4 over valid pixels
  entity = np.array([[0, 0, -1]], np.int16)
  np.testing.assert_array_equal(processing.tonemap(color, entity), 0.0)


def test_tonemap_float16_table_matches_float32_path():
  rng = np.random.default_rng(0)
  color = (np.abs(rng.standard_normal((40, 50, 3))) * 2).astype(np.float16)
  color[0, 0, 0], color[1, 1, 1], color[2, 2, 2] = np.nan, np.inf, -np.inf
  entity = rng.integers(-1, 4, (40, 50)).astype(np.int16)
  a = processing.tonemap(color, entity)
  b = processing.tonemap(color.astype(np.float32), entity)
  np.testing.assert_array_equal(a, b)
  assert a[0, 0, 0] == 0.0 and a[1, 1, 1] == 1.0 and a[2, 2, 2] == 0.0


def test_to_uint8_rounds():
  np.testing.assert_array_equal(
      processing.to_uint8(np.array([0.0, 0.5 / 255, 1.4 / 255, 1.6 / 255, 1.0, 1.2, -0.1])),
      [0, 0, 1, 2, 255, 255, 0])


def test_resize_shapes_landscape():
  x = np.zeros((768, 1024, 3), np.float32)
  assert processing.short_side_shape(768, 1024, 256) == (256, 341)
  assert processing.short_side_shape(768, 1024, 64) == (64, 85)
  assert processing.short_side_shape(768, 1024, 32) == (32, 43)
  assert processing.short_side_shape(1024, 768, 64) == (85, 64)
  y = processing.resize_short_side(x, 64, "bilinear")
  assert y.shape == (64, 85, 3) and y.dtype == np.float32
  assert processing.center_crop(y, 64).shape == (64, 64, 3)
  d = processing.resize_short_side(x[..., 0].astype(np.float16), 128, "nearest")
  assert d.shape == (128, 171) and d.dtype == np.float16


def test_center_crop_window():
  x = np.arange(6 * 9).reshape(6, 9)
  np.testing.assert_array_equal(processing.center_crop(x, 4), x[1:5, 2:6])
  with pytest.raises(ValueError):
    processing.center_crop(x, 7)


def test_nearest_keeps_label_set_and_samples_block_centres():
  rng = np.random.default_rng(1)
  labels = rng.choice(np.array([-1, 1, 2, 22, 40], np.int16), size=(768, 1024))
  out = processing.resize_short_side(labels, 256, "nearest")
  assert out.dtype == np.int16
  assert set(np.unique(out)) <= {-1, 1, 2, 22, 40}
  # 768 -> 256 is exactly 3x: output row i samples input row 3i + 1.
  cols = np.floor((np.arange(341) + 0.5) * 1024 / 341).astype(int)
  np.testing.assert_array_equal(out, labels[1::3][:, cols])


def test_nearest_keeps_nan():
  depth = np.full((768, 1024), 2.0, np.float16)
  depth[:384] = np.nan
  out = processing.resize_short_side(depth, 64, "nearest")
  assert np.isnan(out[:32]).all() and (out[32:] == 2.0).all()


def test_bilinear_matches_pil():
  # PIL's BILINEAR on float ("F") images is the antialiased triangle filter.
  rng = np.random.default_rng(2)
  x = rng.random((96, 128, 3)).astype(np.float32)
  for size in (24, 40, 96, 150):
    out = processing.resize_short_side(x, size, "bilinear")
    oh, ow = out.shape[:2]
    ref = np.stack([np.asarray(PIL.Image.fromarray(x[..., c]).resize(
        (ow, oh), PIL.Image.BILINEAR)) for c in range(3)], axis=-1)
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_bilinear_hand_computed_2x():
  # Downscale 6 -> 3: output i is centred at input coordinate 2i + 1 and the
  # triangle is widened to half-width 2, so input pixel j (centre j + 0.5)
  # gets weight 1 - |j + 0.5 - (2i + 1)| / 2, renormalised at the borders.
  x = np.array([0.0, 1.0, 4.0, 9.0, 16.0, 25.0], np.float32)[:, None]
  out = processing.resize(x, (3, 1), "bilinear")[:, 0]
  expect = [(0.75 * 0 + 0.75 * 1 + 0.25 * 4) / 1.75,
            (0.25 * 1 + 0.75 * 4 + 0.75 * 9 + 0.25 * 16) / 2.0,
            (0.25 * 9 + 0.75 * 16 + 0.75 * 25) / 1.75]
  np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_bilinear_constant_image_stays_constant():
  x = np.full((768, 1024, 3), 0.37, np.float32)
  out = processing.resize_short_side_and_crop(x, 64, "bilinear")
  np.testing.assert_allclose(out, 0.37, rtol=1e-6)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_fused_resize_crop_equals_separate(method):
  rng = np.random.default_rng(3)
  x = rng.random((768, 1024, 3)).astype(np.float32)
  for size in (32, 64, 256):
    np.testing.assert_array_equal(
        processing.resize_short_side_and_crop(x, size, method),
        processing.center_crop(processing.resize_short_side(x, size, method), size))


def test_clean_semantic():
  s = np.array([-1, 0, 1, 40, 41, -5], np.int16)
  np.testing.assert_array_equal(processing.clean_semantic(s), [-1, -1, 1, 40, -1, -1])


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    f.create_dataset("dataset", data=array, compression="gzip")


def _write_frame(root, frame, hw=(768, 1024)):
  h, w = hw
  rng = np.random.default_rng(0)
  arrays = {
      processing.COLOR: rng.random((h, w, 3)).astype(np.float16),
      processing.DEPTH: np.full((h, w), 3.0, np.float16),
      processing.SEMANTIC: np.ones((h, w), np.int16),
      processing.ENTITY: np.zeros((h, w), np.int16),
  }
  for k, a in arrays.items():
    _write(processing.frame_path(root, *frame, k), a)
  return arrays


def test_read_frame_and_errors(tmp_path):
  frame = ("ai_001_001", "cam_00", 7)
  arrays = _write_frame(tmp_path, frame)
  assert processing.frame_path(tmp_path, *frame, "color").endswith(
      "ai_001_001/images/scene_cam_00_final_hdf5/frame.0007.color.hdf5")
  raw = processing.read_frame(tmp_path, *frame)
  np.testing.assert_array_equal(raw.color, arrays[processing.COLOR])
  assert raw.depth.dtype == np.float16 and raw.semantic.dtype == np.int16

  with pytest.raises(processing.FrameError) as e:
    processing.read_frame(tmp_path, "ai_001_001", "cam_00", 8)
  assert e.value.reason == processing.MISSING_FILE

  path = processing.frame_path(tmp_path, *frame, processing.DEPTH)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])
  with pytest.raises(processing.FrameError) as e:
    processing.read_frame(tmp_path, *frame)
  assert e.value.reason == processing.CORRUPT_HDF5

  open(path, "wb").write(b"not an hdf5 file")
  with pytest.raises(processing.FrameError) as e:
    processing.read_frame(tmp_path, *frame)
  assert e.value.reason == processing.CORRUPT_HDF5

  _write(path, np.zeros((768, 1000), np.float16))
  with pytest.raises(processing.FrameError) as e:
    processing.read_frame(tmp_path, *frame)
  assert e.value.reason == processing.BAD_SHAPE


def test_process_frame_outputs():
  rng = np.random.default_rng(4)
  depth = (rng.random((768, 1024)) * 10).astype(np.float16)
  depth[:100] = np.nan
  depth[700:, 130:140] = np.inf  # sampled: raw column 136 (see below), rows 712..760
  raw = processing.RawFrame(
      color=(rng.random((768, 1024, 3)) * 2).astype(np.float16), depth=depth,
      semantic=rng.integers(-1, 45, (768, 1024)).astype(np.int16),
      entity=np.where(np.isnan(depth), -1, 1).astype(np.int16))
  ex = processing.process_frame(raw, 48)
  assert ex["image"].shape == (48, 48, 3) and ex["image"].dtype == np.uint8
  assert ex["depth"].shape == (48, 48) and ex["depth"].dtype == np.float32
  assert ex["semantic"].shape == (48, 48) and ex["semantic"].dtype == np.int16
  # Written out: 768x1024 -> 48x64 is a factor of 16; nearest takes the raw pixel under
  # each output pixel's centre, (i + 0.5) * 16 -> row 16i + 8; the 48-wide centre
  # crop starts at column 8 of 64, i.e. raw column 16 * (j + 8) + 8.
  rows, cols = 16 * np.arange(48) + 8, 16 * (np.arange(48) + 8) + 8
  expect = depth[rows][:, cols].astype(np.float32)
  expect[~np.isfinite(expect)] = np.nan
  np.testing.assert_array_equal(ex["depth"], expect)
  assert np.isnan(ex["depth"][:6]).all() and np.isfinite(ex["depth"][6:44]).all()
  assert np.isnan(ex["depth"][44:, 0]).all() and np.isfinite(ex["depth"][44:, 1:]).all()
  np.testing.assert_array_equal(ex["semantic"], np.where(
      (raw.semantic[rows][:, cols] >= 1) & (raw.semantic[rows][:, cols] <= 40),
      raw.semantic[rows][:, cols], -1))
  # The image: PIL's antialiased bilinear on the tone-mapped floats, then the crop,
  # then x255 rounded; PIL and ours differ by ~1e-6 before rounding, so at most 1 level.
  rgb = processing.tonemap(raw.color, raw.entity)
  pil = np.stack([np.asarray(PIL.Image.fromarray(np.ascontiguousarray(rgb[..., c])).resize(
      (64, 48), PIL.Image.BILINEAR)) for c in range(3)], axis=-1)[:, 8:56]
  want = np.clip(np.round(pil * 255.0), 0, 255)
  assert np.abs(ex["image"].astype(np.float64) - want).max() <= 1
  s = ex["semantic"]
  assert np.all((s == -1) | ((s >= 1) & (s <= 40)))


def test_planar_depth_factor():
  f = processing.FOCAL_PX
  factor = processing.planar_depth_factor(32)
  # 768x1024 -> 32x43 (1024 * 32 / 768 = 42.7 rounds to 43), centre crop from column 5;
  # nearest: the raw pixel under (i + 0.5) * in / out.
  rows = np.floor((np.arange(32) + 0.5) * 24).astype(int)
  cols = np.floor((np.arange(5, 37) + 0.5) * 1024 / 43).astype(int)
  rows2, cols2 = processing.source_pixels(32)
  np.testing.assert_array_equal(rows2, rows)
  np.testing.assert_array_equal(cols2, cols)
  x = cols[None, :] + 0.5 - 512
  y = rows[:, None] + 0.5 - 384
  np.testing.assert_allclose(factor, f / np.sqrt(x**2 + y**2 + f**2), rtol=1e-6)
  # Scene matrices from the camera table: ai_001_001 is the usual pinhole.
  np.testing.assert_allclose(
      processing.planar_depth_factor(32, metadata.cam_from_uv("ai_001_001")), factor,
      rtol=1e-5)


def test_metadata_tables():
  train = metadata.split_frames("train")
  assert len(train) == 19399 and train[0] == ("ai_001_001", "cam_00", 0)
  assert len(metadata.split_frames("validation")) == 1203
  assert len(metadata.split_frames("test")) == 933
  scenes = [{f[0] for f in metadata.split_frames(s)} for s in metadata.SPLIT_FILES]
  assert not (scenes[0] & scenes[1]) and not (scenes[0] & scenes[2])
  names = metadata.label_names()
  assert len(names) == 40 and names[1] == "wall" and names[22] == "ceiling"
  assert metadata.label_colors()[1].tolist() == [174, 199, 232]


def test_bilinear_matches_jax_antialiased_linear():
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  x = rng.random((96, 128, 3)).astype(np.float32)
  for size in (24, 64):
    out = processing.resize_short_side(x, size, "bilinear")
    ref = np.asarray(jax.image.resize(x, out.shape, "linear", antialias=True))
    np.testing.assert_allclose(out, ref, atol=5e-6)


def test_planar_depth_hand_computed():
  """Stored pixels at resolution 768 sample raw pixel (i, j + 128) exactly."""
  factor = processing.planar_depth_factor(768)
  # Centre: raw pixel (384, 512), X = Y = 0.5 px off the axis: planar == distance
  # to 3e-7, f / sqrt(0.5 + f^2) = 0.99999968...
  assert factor[384, 384] == pytest.approx(0.9999996821, abs=1e-9)
  # Corner: raw pixel (0, 128), X = 128.5 - 512 = -383.5, Y = 0.5 - 384 = -383.5;
  # 886.81 / sqrt(2 * 383.5^2 + 886.81^2) = 886.81 / 1039.5078 = 0.853106 (by hand).
  assert factor[0, 0] == pytest.approx(0.8531056679, abs=1e-6)
  assert factor[767, 767] == pytest.approx(factor[0, 0], abs=1e-6)  # symmetric corner
  # A tilt-shift scene from the camera table (M[2,1] != 0): ray = M (u, v, 1),
  # u = 128.5 / 1024 * 2 - 1, v = 1 - 0.5 / 768 * 2; factor = |ray_z| / |ray|.
  m = metadata.cam_from_uv("ai_007_005")
  assert m[2, 1] == pytest.approx(0.09961479, abs=1e-8)
  u, v = 128.5 / 1024 * 2 - 1, 1 - 0.5 / 768 * 2
  ray = np.array([m[0, 0] * u, m[1, 1] * v, m[2, 1] * v + m[2, 2]])
  expected = abs(ray[2]) / np.sqrt((ray**2).sum())
  got = processing.planar_depth_factor(768, m)
  assert got[0, 0] == pytest.approx(expected, rel=1e-6)
  assert got[0, 0] != pytest.approx(factor[0, 0], rel=1e-3)  # the scene's camera matters


def test_check_valid_depth():
  processing.check_valid_depth(np.array([[np.nan, 2.0]], np.float32), "x")
  for bad in ([[np.nan, np.nan]], [[0.0, -1.0]], [[np.inf, np.nan]]):
    with pytest.raises(processing.FrameError, match="no finite positive depth") as e:
      processing.check_valid_depth(np.array(bad, np.float32), "x")
    assert e.value.reason == processing.NO_VALID_DEPTH


def test_split_schemes_from_files():
  import csv  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(metadata.__file__), "metadata_images_split_scene_v1.csv")
  counts = {}
  with open(path) as f:
    for row in csv.DictReader(f):
      if row["included_in_public_release"] == "True":
        counts[row["split_partition_name"]] = counts.get(row["split_partition_name"], 0) + 1
  assert counts == {"train": 59543, "val": 7386, "test": 7690}
  assert [len(metadata.split_frames(s, "official")) for s in ("train", "validation", "test")
          ] == [59543, 7386, 7690]
  assert metadata.split_frames("train", "official")[0] == ("ai_001_001", "cam_00", 0)
  assert metadata.split_frames("train") == metadata.split_frames("train", "semantic_md")
  with pytest.raises(ValueError, match="split scheme"):
    metadata.split_frames("train", "nyu")
  assert metadata.is_known_broken("ai_004_009", "cam_01")
  assert not metadata.is_known_broken("ai_004_009", "cam_00")
