"""Tests for tfds_hypersim.synthetic: HyperSim layout, value types, geometry."""

import os

import h5py
import numpy as np
import pytest

from tfds_hypersim import metadata, processing, synthetic

NUM_FRAMES = {"train": 3, "validation": 1, "test": 1}
SEED = 5
KINDS = {"color": ("final", np.float16, (768, 1024, 3)),
         "depth_meters": ("geometry", np.float16, (768, 1024)),
         "semantic": ("geometry", np.int16, (768, 1024)),
         "render_entity_id": ("geometry", np.int16, (768, 1024))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  frames = synthetic.generate(root, num_frames=NUM_FRAMES, seed=SEED, frames_per_scene=2,
                              workers=1)
  return root, frames


def _read(root, scene, camera, frame, kind):
  group = KINDS[kind][0]
  path = os.path.join(root, scene, "images", f"scene_{camera}_{group}_hdf5",
                      f"frame.{frame:04d}.{kind}.hdf5")
  with h5py.File(path, "r") as f:
    assert list(f.keys()) == ["dataset"]
    assert f["dataset"].compression == "gzip"
    return f["dataset"][()]


def _frame_arrays(root, frame):
  return {k: _read(root, *frame, k) for k in KINDS}


def test_layout_dtypes_shapes(generated):
  root, frames = generated
  assert len(frames) == sum(NUM_FRAMES.values())
  for frame in frames:
    for kind, (_, dtype, shape) in KINDS.items():
      a = _read(root, *frame, kind)
      assert a.dtype == dtype and a.shape == shape, (kind, a.dtype, a.shape)
  scenes = {f[0] for f in frames}
  assert sorted(os.listdir(root)) == sorted(scenes | {synthetic.MANIFEST})


def test_names_come_from_split_lists(generated):
  root, frames = generated
  manifest = synthetic.load_manifest(root)
  assert manifest["seed"] == SEED
  records = manifest["frames"]
  assert [(r["scene"], r["camera"], r["frame"]) for r in records] == [tuple(f) for f in frames]
  for r in records:
    assert (r["scene"], r["camera"], r["frame"]) in set(metadata.split_frames(r["split"]))
  counts = {s: sum(r["split"] == s for r in records) for s in NUM_FRAMES}
  assert counts == NUM_FRAMES
  # Several frames per scene (2 here), so frames share a room.
  train_scenes = [r["scene"] for r in records if r["split"] == "train"]
  assert len(set(train_scenes)) == 2


def test_value_ranges_and_validity(generated):
  root, frames = generated
  saw_hole = saw_unlabelled_geometry = False
  for frame in frames:
    a = _frame_arrays(root, frame)
    color, depth = a["color"].astype(np.float32), a["depth_meters"].astype(np.float32)
    sem, ent = a["semantic"], a["render_entity_id"]
    assert np.isfinite(color).all() and color.min() >= 0
    assert 0.02 < np.median(color) < 5 and color.max() < 60
    no_geometry = ent == -1
    np.testing.assert_array_equal(np.isnan(depth), no_geometry)
    assert (sem[no_geometry] == -1).all()
    assert np.all((sem == -1) | ((sem >= 1) & (sem <= 40)))
    d = depth[~no_geometry]
    assert d.min() > 0.1 and d.max() < 14
    saw_hole |= bool(no_geometry.any())
    saw_unlabelled_geometry |= bool(((sem == -1) & ~no_geometry).any())
    assert len(np.unique(sem)) >= 3  # walls, floor and at least something else
  assert saw_hole and saw_unlabelled_geometry


def _rays(world_from_cam):
  """Unit world rays per pixel, float64: camera-space (X, -Y, -f)."""
  x = np.arange(1024) + 0.5 - 512
  y = np.arange(768) + 0.5 - 384
  cam = np.stack(np.broadcast_arrays(x[None, :], -y[:, None], -886.81), axis=-1)
  cam /= np.linalg.norm(cam, axis=-1, keepdims=True)
  return cam @ np.asarray(world_from_cam).T


def test_depth_is_euclidean_distance_to_room_planes(generated):
  root, _ = generated
  checked = 0
  for r in synthetic.load_manifest(root)["frames"]:
    a = _frame_arrays(root, (r["scene"], r["camera"], r["frame"]))
    depth = a["depth_meters"].astype(np.float64)
    ent = a["render_entity_id"]
    o = np.array(r["position"])
    rot = np.array(r["world_from_cam"])
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
    d = _rays(rot)
    lx, ly, hc = r["room_size"]
    # Room faces have entity ids 0..5: x=0, x=Lx, y=0, y=Ly, floor z=0, ceiling z=Hc.
    planes = [(0, 0.0), (0, lx), (1, 0.0), (1, ly), (2, 0.0), (2, hc)]
    for face, (axis, coord) in enumerate(planes):
      m = ent == face
      if not m.any():
        continue
      expected = (coord - o[axis]) / d[..., axis][m]
      np.testing.assert_allclose(depth[m], expected, rtol=1e-3, atol=1e-3)
      checked += 1
    floor = ent == 4
    assert floor.any(), "every view should see some floor"
    # Floor pixels: distance = camera height / (-ray z), and labelled floor.
    np.testing.assert_allclose(depth[floor], o[2] / -d[..., 2][floor], rtol=1e-3)
    assert (a["semantic"][floor] == 2).all()
  assert checked >= 10


def test_render_matches_written_files(generated):
  root, frames = generated
  scene, camera, frame = frames[0]
  s = synthetic.make_scene(scene, SEED)
  pose = synthetic.make_pose(s, SEED, camera, frame)
  out = synthetic.render(s, pose)
  a = _frame_arrays(root, frames[0])
  np.testing.assert_array_equal(out["depth"].astype(np.float16), a["depth_meters"])
  np.testing.assert_array_equal(out["semantic"], a["semantic"])
  np.testing.assert_array_equal(out["color"].astype(np.float16), a["color"])
  lx, ly, hc = s.size
  assert 3 <= lx <= 9 and 3 <= ly <= 9 and 2.4 <= hc <= 3.4
  assert 1.1 <= pose.position[2] <= 1.7


def test_deterministic_by_seed(tmp_path):
  num = {"train": 1, "test": 1}
  a = synthetic.generate(tmp_path / "a", num_frames=num, seed=11, workers=1)
  b = synthetic.generate(tmp_path / "b", num_frames=num, seed=11, workers=1)
  c = synthetic.generate(tmp_path / "c", num_frames=num, seed=12, workers=1)
  assert a == b and a != c
  for frame in a:
    fa, fb = _frame_arrays(tmp_path / "a", frame), _frame_arrays(tmp_path / "b", frame)
    for k in KINDS:
      np.testing.assert_array_equal(fa[k], fb[k])
  assert synthetic.choose_frames(num, 11) == synthetic.choose_frames(num, 11)


def test_worker_processes_give_same_files(tmp_path):
  num = {"validation": 2}
  one = synthetic.generate(tmp_path / "one", num_frames=num, seed=2, workers=1)
  two = synthetic.generate(tmp_path / "two", num_frames=num, seed=2, workers=2)
  assert one == two
  for frame in one:
    fa, fb = _frame_arrays(tmp_path / "one", frame), _frame_arrays(tmp_path / "two", frame)
    for k in KINDS:
      np.testing.assert_array_equal(fa[k], fb[k])
  assert (synthetic.load_manifest(tmp_path / "one")["frames"]
          == synthetic.load_manifest(tmp_path / "two")["frames"])


def test_cli(tmp_path, capsys):
  synthetic.main(["--out", str(tmp_path), "--train", "1", "--validation", "0",
                  "--test", "0", "--workers", "1", "--seed", "4"])
  assert "wrote 1 frames" in capsys.readouterr().out
  (record,) = synthetic.load_manifest(tmp_path)["frames"]
  raw = processing.read_frame(tmp_path, record["scene"], record["camera"], record["frame"])
  assert raw.color.dtype == np.float16


def test_unknown_split_rejected(tmp_path):
  with pytest.raises(ValueError):
    synthetic.generate(tmp_path, num_frames={"val": 2})


def test_cli_flag_spellings_and_errors(capsys):
  """Both spellings set the same flag (argparse had --frames_per_scene only; absl adds hyphens);
  a bad flag or a missing --out is one line with exit status 1."""
  from smd_jax import cli  # pylint: disable=g-import-not-at-top
  for spelling in ("--frames_per_scene", "--frames-per-scene"):
    values, _ = cli.parse_argv(synthetic.define_flags, ["--out", "x", spelling, "3"], usage="")
    assert values.frames_per_scene == 3
  assert synthetic.main(["--train", "1"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: --out") and "\n" not in err
