"""Tests for the `hypersim` TFDS builder, built from tfds_hypersim/dummy_data.

Plain pytest (tfds.testing needs TensorFlow): build into a tmp data_dir, read
back with `as_data_source`, compare with the raw HDF5 files processed here
independently (h5py + numpy + PIL).
"""

import csv
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
VERSION = str(tfds_hypersim.Builder.VERSION)  # TFDS writes DATA_DIR/hypersim/<config>/<VERSION>


def _manifest():
  with open(os.path.join(DUMMY, "synthetic_manifest.json")) as f:
    return json.load(f)


def _broken():
  with open(os.path.join(DUMMY, make_dummy_data.BROKEN)) as f:
    return {k: tuple(v) for k, v in json.load(f).items()}


def _build(data_dir, manual_dir, resolution=RES, config=None):
  builder = tfds_hypersim.Builder(
      config=config or tfds_hypersim.hypersim_config(resolution), data_dir=data_dir,
      num_workers=1)
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
  assert [c.name for c in tfds_hypersim.Builder.BUILDER_CONFIGS] == [
      "res256", "res128", "res64", "res256_planar", "res256_official",
      "res256_official_planar"]
  for r in (256, 128, 64):
    assert tfds_hypersim.hypersim_config(r) is tfds_hypersim.Builder.builder_configs[f"res{r}"]
  assert tfds_hypersim.hypersim_config(32).name == "res32"
  assert tfds_hypersim.hypersim_config(32).resolution == 32
  c = tfds_hypersim.hypersim_config(256, split_scheme="official", depth_type="planar")
  assert c is tfds_hypersim.Builder.builder_configs["res256_official_planar"]
  assert (c.resolution, c.split_scheme, c.depth_type) == (256, "official", "planar")
  c = tfds_hypersim.hypersim_config(64, depth_type="planar")
  assert (c.name, c.split_scheme, c.depth_type) == ("res64_planar", "semantic_md", "planar")
  assert tfds_hypersim.hypersim_config(64).depth_type == "distance"
  # One name per combination.
  names = {tfds_hypersim.hypersim_config(r, s, d).name for r in (64, 256)
           for s in ("semantic_md", "official") for d in ("distance", "planar")}
  assert len(names) == 8
  with pytest.raises(ValueError, match="split_scheme"):
    tfds_hypersim.hypersim_config(64, split_scheme="nyu")
  with pytest.raises(ValueError, match="depth_type"):
    tfds_hypersim.hypersim_config(64, depth_type="disparity")


def test_builder_defaults(tmp_path):
  b = tfds_hypersim.Builder(data_dir=tmp_path)
  assert b.builder_config.name == "res256"
  assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert b.info.features["image"].shape == (256, 256, 3)
  assert b.version == VERSION == "3.1.0"
  assert b.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_builder_accepts_caller_made_configs(tmp_path):
  same = tfds_hypersim.HypersimConfig(name="res64", resolution=64)
  b = tfds_hypersim.Builder(config=same, data_dir=tmp_path)
  assert b.builder_config is tfds_hypersim.hypersim_config(64)
  with pytest.raises(ValueError, match="predefined"):
    tfds_hypersim.Builder(config=tfds_hypersim.HypersimConfig(
        name="res64", resolution=64, depth_type="planar"), data_dir=tmp_path)
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
  # The counts are in the data set's metadata, read back from its folder.
  again = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(RES),
                                data_dir=built.data_dir_root)
  assert again.is_prepared()
  assert again.info.metadata["skipped"] == {
      "train": {"corrupt_hdf5": 1, "missing_file": 1}, "validation": {}, "test": {}}
  listed = {s: len(tfds_hypersim.metadata.split_frames(s)) for s in ("train", "validation", "test")}
  assert again.info.metadata["absent"] == {
      "train": listed["train"] - 4, "validation": listed["validation"] - 1,
      "test": listed["test"] - 1}
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


def test_records_hold_the_raw_little_endian_bytes(built):
  # Storage format of 3.0.0: each array's bytes, C order, as written here from the
  # raw files (no PNG, no zlib), so reading is a copy (docs/data.md, "Storage format").
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  rows, cols, _, _ = _nearest_grid(RES)
  src = built.as_data_source()["train"]
  for i in range(len(src)):
    stored = tf_example_pb2.Example.FromString(src.data_source[i]).features.feature
    stored = {k: stored[k].bytes_list.value for k in ("image", "depth", "semantic", "scene",
                                                      "camera")}
    assert all(len(v) == 1 for v in stored.values())
    scene, camera = stored["scene"][0].decode(), stored["camera"][0].decode()
    frame = int(src[i]["frame"])
    depth = _raw("depth_meters", scene, camera, frame)[rows][:, cols]
    assert stored["depth"][0] == depth.astype("<f4").tobytes()
    sem = _raw("semantic", scene, camera, frame)[rows][:, cols]
    assert stored["semantic"][0] == sem.astype("<i2").tobytes()
    image = stored["image"][0]
    assert len(image) == RES * RES * 3
    ref = _reference_image(scene, camera, frame, RES)  # [RES, RES, 3], row-major
    diff = np.abs(np.frombuffer(image, np.uint8).astype(np.int32) - ref.reshape(-1))
    assert diff.max() <= 1, diff.max()


def _shards(builder):
  """{split: (writer options, file bytes, serialized records)} of a built data set."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  out = {}
  for split, src in builder.as_data_source().items():
    (path,) = [os.path.join(builder.data_dir, f) for f in os.listdir(builder.data_dir)
               if f.startswith(f"hypersim-{split}.array_record")]
    reader = array_record_module.ArrayRecordReader(path)
    options = reader.writer_options_string()
    reader.close()
    with open(path, "rb") as f:
      out[split] = (options, f.read(), [src.data_source[i] for i in range(len(src))])
  return out


def test_shards_are_written_uncompressed(built):
  # Since 3.1.0 (docs/data.md, "Storage format"): array_record's zstd bounded reading.
  for split, (options, data, records) in _shards(built).items():
    assert "uncompressed" in options.split(",") and "zstd" not in options, (split, options)
    # No codec in between: each serialized record lies in the file as it is (records
    # of 32 px fit between the block headers riegeli puts every 64 KiB).
    assert records and all(record in data for record in records), split


def test_zstd_shards_hold_the_same_examples(built, tmp_path):
  zstd = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(RES), data_dir=tmp_path,
                               num_workers=1, record_compression="zstd")
  zstd.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DUMMY))
  want = _shards(built)
  got = _shards(zstd)
  assert got.keys() == want.keys()
  for split, (options, data, records) in got.items():
    assert "zstd:3" in options.split(","), options
    assert records == want[split][2]  # the same tf.Examples, in the same order
    assert not any(record in data for record in records), split  # compressed on disk
  with pytest.raises(ValueError, match="record_compression must be one of"):
    tfds_hypersim.Builder(data_dir=tmp_path, record_compression="lz4")


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


def _official_split_of():
  """(scene, camera, frame) -> TFDS split, read from HyperSim's csv here."""
  names = {"train": "train", "val": "validation", "test": "test"}
  path = os.path.join(os.path.dirname(tfds_hypersim.__file__),
                      "metadata_images_split_scene_v1.csv")
  out = {}
  with open(path) as f:
    for row in csv.DictReader(f):
      if row["included_in_public_release"] == "True":
        out[(row["scene_name"], row["camera_name"], int(row["frame_id"]))] = (
            names[row["split_partition_name"]])
  return out


def _camera_matrix(scene):
  path = os.path.join(os.path.dirname(tfds_hypersim.__file__),
                      "metadata_camera_parameters.csv")
  with open(path) as f:
    for row in csv.DictReader(f):
      if row["scene_name"] == scene:
        return np.array([[float(row[f"M_cam_from_uv_{r}{c}"]) for c in range(3)]
                         for r in range(3)])
  raise KeyError(scene)


def test_official_planar_config(built, tmp_path):
  """res32_official_planar: splits from the csv, depth = distance * |ray_z|/|ray|."""
  config = tfds_hypersim.hypersim_config(RES, "official", "planar")
  assert config.name == "res32_official_planar"
  planar = _build(tmp_path, DUMMY, config=config)
  split_of = _official_split_of()
  good = [tuple(r[k] for k in ("scene", "camera", "frame")) for r in _manifest()["frames"]]
  good = [f for f in good if f not in _broken().values()]
  expected = {}
  for f in good:
    expected[split_of[f]] = expected.get(split_of[f], 0) + 1
  sources = planar.as_data_source()
  assert {k: len(v) for k, v in sources.items()} == expected
  assert expected == {"train": 3, "validation": 1}  # the dummy frames' official splits
  broken = _broken()
  assert planar.skipped == {"train": {"corrupt_hdf5": 1},
                            "validation": {"missing_file": 1}, "test": {}}
  assert split_of[broken["corrupt_hdf5"]] == "train"
  assert split_of[broken["missing_file"]] == "validation"

  distance = {(ex["scene"].decode(), ex["camera"].decode(), ex["frame"]): ex["depth"]
              for src in built.as_data_source().values() for ex in src}
  rows, cols, _, _ = _nearest_grid(RES)
  u = (cols + 0.5) / 1024 * 2 - 1
  v = 1 - (rows + 0.5) / 768 * 2
  checked = 0
  for split, src in sources.items():
    for ex in src:
      key = (ex["scene"].decode(), ex["camera"].decode(), ex["frame"])
      assert split_of[key] == split
      m = _camera_matrix(key[0])
      uv1 = np.stack([np.broadcast_to(u[None, :], (RES, RES)),
                      np.broadcast_to(v[:, None], (RES, RES)), np.ones((RES, RES))], -1)
      ray = uv1 @ m.T
      factor = np.abs(ray[..., 2]) / np.linalg.norm(ray, axis=-1)
      np.testing.assert_allclose(ex["depth"], distance[key] * factor, rtol=1e-6)
      np.testing.assert_array_equal(np.isnan(ex["depth"]), np.isnan(distance[key]))
      finite = np.isfinite(ex["depth"])
      assert np.all(ex["depth"][finite] < distance[key][finite])
      checked += 1
  assert checked == 4


def _copy_frame(src_frame, root, dst_frame):
  for kind in ("color", "depth_meters", "semantic", "render_entity_id"):
    group = "final" if kind == "color" else "geometry"
    def path(base, scene, camera, frame):
      return os.path.join(base, scene, "images", f"scene_{camera}_{group}_hdf5",
                          f"frame.{frame:04d}.{kind}.hdf5")
    dst = path(root, *dst_frame)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(path(DUMMY, *src_frame), dst)
  return dst_frame


def test_skip_reasons_counted_with_worker_processes(tmp_path):
  manual = tmp_path / "raw"
  shutil.copytree(DUMMY, manual)
  good = ("ai_018_002", "cam_00", 0)
  train = tfds_hypersim.metadata.split_frames("train")
  # A listed frame of a known-broken trajectory (ml-hypersim issue #22).
  broken = next(f for f in train if f[:2] == ("ai_004_009", "cam_01"))
  _copy_frame(good, manual, broken)
  # A listed frame whose depth has no finite value.
  no_depth = next(f for f in train if f[0] == "ai_001_001")
  _copy_frame(good, manual, no_depth)
  path = (manual / no_depth[0] / "images" / f"scene_{no_depth[1]}_geometry_hdf5" /
          f"frame.{no_depth[2]:04d}.depth_meters.hdf5")
  with h5py.File(path, "w") as f:
    f.create_dataset("dataset", data=np.full((768, 1024), np.nan, np.float16),
                     compression="gzip")
  # A color file of the wrong shape.
  bad_shape = next(f for f in train if f[0] == "ai_001_002")
  _copy_frame(good, manual, bad_shape)
  path = (manual / bad_shape[0] / "images" / f"scene_{bad_shape[1]}_final_hdf5" /
          f"frame.{bad_shape[2]:04d}.color.hdf5")
  with h5py.File(path, "w") as f:
    f.create_dataset("dataset", data=np.zeros((768, 1000, 3), np.float16))

  builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(8),
                                  data_dir=tmp_path / "tfds", num_workers=2, pool="process")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  expected = {"train": {"bad_shape": 1, "corrupt_hdf5": 1, "known_broken": 1,
                        "missing_file": 1, "no_valid_depth": 1},
              "validation": {}, "test": {}}
  assert builder.skipped == expected
  reloaded = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(8),
                                   data_dir=tmp_path / "tfds")
  assert reloaded.info.metadata["skipped"] == expected
  with open(tmp_path / "tfds" / "hypersim" / "res8" / VERSION / "metadata.json") as f:
    assert json.load(f)["skipped"] == expected
  sources = reloaded.as_data_source()
  assert {k: len(v) for k, v in sources.items()} == {"train": 2, "validation": 1, "test": 1}
  keys = {(ex["scene"].decode(), ex["camera"].decode(), ex["frame"])
          for src in sources.values() for ex in src}
  assert not keys & {broken, no_depth, bad_shape}
  # Same examples as the in-process path.
  serial = _build(tmp_path / "serial", manual, resolution=8)
  for split, src in serial.as_data_source().items():
    for a, b in zip(src, sources[split]):
      assert a["scene"] == b["scene"] and a["frame"] == b["frame"]
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["depth"], b["depth"])


def test_build_cli(tmp_path, capsys):
  from tfds_hypersim import build  # pylint: disable=g-import-not-at-top
  rc = build.main(["--manual_dir", DUMMY, "--data_dir", str(tmp_path), "--resolution", "8",
                   "--depth_type", "planar", "--workers", "1"])
  assert rc == 0
  out = capsys.readouterr().out
  assert "hypersim/res8_planar" in out and "train: 2 examples" in out
  assert "'corrupt_hdf5': 1" in out
  assert os.path.isdir(tmp_path / "hypersim" / "res8_planar" / VERSION)
  (tmp_path / "empty").mkdir()
  for bad in (["--manual_dir", str(tmp_path / "nowhere")], ["--manual_dir", str(tmp_path / "empty")]):
    assert build.main(bad + ["--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tfds_hypersim.download" in err and err.count("\n") == 1


@pytest.mark.parametrize("spelling", [
    ["--manual-dir", "m", "--data-dir", "d", "--split-scheme", "official", "--depth-type",
     "planar", "--record-compression", "zstd"],
    ["--manual_dir=m", "--data_dir=d", "--split_scheme=official", "--depth_type=planar",
     "--record_compression=zstd"]])
def test_build_cli_takes_both_flag_spellings(spelling):
  """Hyphenated and absl's underscore spellings set the same flags (parse only, no build)."""
  from smd_jax import cli  # pylint: disable=g-import-not-at-top
  from tfds_hypersim import build  # pylint: disable=g-import-not-at-top
  flag_values, args = cli.parse_argv(build.define_flags, spelling + ["--resolution", "8"],
                                     usage=build.__doc__)
  assert args == []
  assert (flag_values.manual_dir, flag_values.data_dir, flag_values.split_scheme,
          flag_values.depth_type, flag_values.resolution, flag_values.pool,
          flag_values.record_compression) == (
              "m", "d", "official", "planar", 8, "thread", "zstd")
