"""Tests for the `hypersim` TFDS builder, built from tfds_hypersim/dummy_data.

Plain pytest (tfds.testing needs TensorFlow): build into a tmp data_dir, read
back with `as_data_source`, compare with the raw HDF5 files processed here
independently (h5py + numpy + PIL).
"""

import json
import os
import shutil

import h5py
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

import tfds_hypersim
from tfds_hypersim import make_dummy_data

DUMMY = make_dummy_data.default_dir()
RES = 32


def _manifest():
  with open(os.path.join(DUMMY, "synthetic_manifest.json")) as f:
    return json.load(f)


def _broken():
  with open(os.path.join(DUMMY, make_dummy_data.BROKEN)) as f:
    return {k: tuple(v) for k, v in json.load(f).items()}


def _build(data_dir, manual_dir, resolution=RES):
  builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(resolution),
                                  data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("tfds"), DUMMY)


def _raw(kind, scene, camera, frame):
  group = "final" if kind == "color" else "geometry"
  path = os.path.join(DUMMY, scene, "images", f"scene_{camera}_{group}_hdf5",
                      f"frame.{frame:04d}.{kind}.hdf5")
  with h5py.File(path, "r") as f:
    return f["dataset"][()]


def _nearest_grid(res):
  # 768x1024 -> short side res: width round(1024 * res / 768); crop centre.
  ow = int(np.floor(1024 * res / 768 + 0.5))
  left = (ow - res) // 2
  rows = np.floor((np.arange(res) + 0.5) * 768 / res).astype(int)
  cols = np.floor((np.arange(left, left + res) + 0.5) * 1024 / ow).astype(int)
  return rows, cols, ow, left


def _reference_image(scene, camera, frame, res):
  c = _raw("color", scene, camera, frame).astype(np.float64)
  valid = _raw("render_entity_id", scene, camera, frame) != -1
  b = 0.3 * c[..., 0] + 0.59 * c[..., 1] + 0.11 * c[..., 2]
  p = np.percentile(b[valid], 90) if valid.any() else None
  scale = 1.0 if p is None else (0.0 if p < 1e-4 else 0.8**2.2 / p)
  rgb = np.clip(np.maximum(scale * c, 0) ** (1 / 2.2), 0, 1).astype(np.float32)
  _, _, ow, left = _nearest_grid(res)
  chans = [np.asarray(PIL.Image.fromarray(rgb[..., k]).resize((ow, res), PIL.Image.BILINEAR))
           for k in range(3)]
  out = np.stack(chans, axis=-1)[:, left:left + res]
  return np.round(out * 255).astype(np.int32)


def test_registered_and_configs():
  assert tfds.builder_cls("hypersim") is tfds_hypersim.Builder
  assert [c.name for c in tfds_hypersim.Builder.BUILDER_CONFIGS] == ["res256", "res128", "res64"]
  for r in (256, 128, 64):
    assert tfds_hypersim.hypersim_config(r) is tfds_hypersim.Builder.builder_configs[f"res{r}"]
  assert tfds_hypersim.hypersim_config(32).name == "res32"
  assert tfds_hypersim.hypersim_config(32).resolution == 32


def test_builder_defaults(tmp_path):
  b = tfds_hypersim.Builder(data_dir=tmp_path)
  assert b.builder_config.name == "res256"
  assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert b.info.features["image"].shape == (256, 256, 3)
  assert b.version == "1.0.0"
  assert b.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_builder_accepts_caller_made_configs(tmp_path):
  same = tfds_hypersim.HypersimConfig(name="res64", resolution=64)
  b = tfds_hypersim.Builder(config=same, data_dir=tmp_path)
  assert b.builder_config is tfds_hypersim.hypersim_config(64)
  custom = tfds_hypersim.HypersimConfig(name="tiny", resolution=16)
  b = tfds_hypersim.Builder(config=custom, data_dir=tmp_path)
  assert b.info.features["depth"].shape == (16, 16)
  assert b.builder_config.name == "tiny"
  with pytest.raises(ValueError):
    tfds_hypersim.Builder(config=tfds_hypersim.HypersimConfig(name="res64", resolution=32),
                          data_dir=tmp_path)
  b = tfds_hypersim.Builder(config="res128", data_dir=tmp_path)
  assert b.builder_config.resolution == 128


def test_split_counts_and_skips(built):
  sources = built.as_data_source()
  assert {k: len(v) for k, v in sources.items()} == {"train": 2, "validation": 1, "test": 1}
  assert built.info.splits["train"].num_examples == 2
  assert built.skipped["train"] == {"corrupt_hdf5": 1, "missing_file": 1}
  assert not built.skipped["validation"] and not built.skipped["test"]
  keys = {(ex["scene"].decode(), ex["camera"].decode(), ex["frame"])
          for src in sources.values() for ex in src}
  for frame in _broken().values():
    assert frame not in keys


def test_examples_match_raw_files(built):
  rows, cols, _, _ = _nearest_grid(RES)
  split_of = {(r["scene"], r["camera"], r["frame"]): r["split"] for r in _manifest()["frames"]}
  saw_nan = False
  for split, src in built.as_data_source().items():
    for ex in src:
      scene, camera, frame = ex["scene"].decode(), ex["camera"].decode(), ex["frame"]
      assert isinstance(ex["frame"], int)
      assert split_of[(scene, camera, frame)] == split
      assert ex["image"].dtype == np.uint8 and ex["image"].shape == (RES, RES, 3)
      assert ex["depth"].dtype == np.float32 and ex["depth"].shape == (RES, RES)
      assert ex["semantic"].dtype == np.int16 and ex["semantic"].shape == (RES, RES)

      depth = _raw("depth_meters", scene, camera, frame)[rows][:, cols].astype(np.float32)
      np.testing.assert_array_equal(ex["depth"], depth)  # NaN positions equal too
      saw_nan |= bool(np.isnan(ex["depth"]).any())
      sem = _raw("semantic", scene, camera, frame)[rows][:, cols]
      np.testing.assert_array_equal(ex["semantic"], sem)
      s = ex["semantic"]
      assert np.all((s == -1) | ((s >= 1) & (s <= 40)))
      # NaN depth exactly where there is no geometry.
      entity = _raw("render_entity_id", scene, camera, frame)[rows][:, cols]
      np.testing.assert_array_equal(np.isnan(ex["depth"]), entity == -1)

      ref = _reference_image(scene, camera, frame, RES)
      diff = np.abs(ex["image"].astype(np.int32) - ref)
      assert diff.max() <= 1, diff.max()
  assert saw_nan, "dummy data should contain pixels without geometry"


def test_missing_splits_left_out(tmp_path):
  manual = tmp_path / "raw"
  manual.mkdir()
  for r in _manifest()["frames"]:
    if r["split"] == "train" and not (manual / r["scene"]).exists():
      shutil.copytree(os.path.join(DUMMY, r["scene"]), manual / r["scene"])
  builder = _build(tmp_path / "tfds", manual, resolution=8)
  assert set(builder.info.splits.keys()) == {"train"}
  ex = builder.as_data_source()["train"][0]
  assert ex["image"].shape == (8, 8, 3)


def test_manual_dir_without_frames_fails_clearly(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(AssertionError, match="does not exist or is empty"):  # TFDS's check
    _build(tmp_path / "tfds", tmp_path / "raw", resolution=8)
  (tmp_path / "raw" / "ai_999_999" / "images").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="No frame"):
    _build(tmp_path / "tfds", tmp_path / "raw", resolution=8)
