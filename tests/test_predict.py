"""python -m smd_jax.predict: photos of any size in, depth files of the same size out.

Two toy-encoder runs train two steps each with the real trainer (tests/test_evaluate.py
`tiny_config`): a 2-head model (RGB in; depth + semantics out) and a 1hot-3 model
(RGB + semantic labels in). The second runs with given label maps and two-stage,
with the first model's predicted labels.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from smd_jax import predict, semantics
from smd_jax.inference import predict_lib, trained_run
from smd_jax.training import data_parallel, trainer
from tests.test_evaluate import tiny_config, toy_encoder  # noqa: F401  (fixture)

# (height, width, format): landscape, portrait, square, odd sizes, RGBA and JPEG.
PHOTOS = {"wide": (45, 70, "png"), "tall": (81, 50, "jpg"), "square": (32, 32, "png"),
          "rgba": (47, 71, "png")}


@pytest.fixture(scope="module")
def runs(toy_encoder, tmp_path_factory):  # noqa: F811
  root = tmp_path_factory.mktemp("predict")
  data = str(root / "data")
  two_head = str(root / "two_head")
  onehot = str(root / "onehot3")
  frames = dict(train=2, validation=1, test=0)  # no evaluation to speak of here
  for workdir, config in ((two_head, tiny_config(data, num_frames=frames)),
                          (onehot, tiny_config(data, transform="onehot3", semantic_head=False,
                                               num_frames=frames))):
    config.eval_every_steps = -1
    config.num_images = 1
    trainer.train_and_evaluate(config, workdir)
  return two_head, onehot


@pytest.fixture
def photos(tmp_path):
  folder = tmp_path / "photos"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for stem, (h, w, fmt) in PHOTOS.items():
    pixels = rng.integers(0, 256, (h, w, 4 if stem == "rgba" else 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{stem}.{fmt}")
  (folder / "notes.txt").write_text("not an image")  # ignored: not PNG/JPEG
  return folder


def test_network_shape_keeps_the_short_side_and_multiples_of_32():
  assert predict_lib.network_shape(768, 1024, 256) == (256, 352)
  assert predict_lib.network_shape(1024, 768, 256) == (352, 256)
  assert predict_lib.network_shape(45, 70, 32) == (32, 64)
  assert predict_lib.network_shape(10, 10, 32) == (32, 32)


def test_predict_round_trips_sizes_and_writes_files(runs, photos, tmp_path):
  two_head, _ = runs
  out = tmp_path / "out"
  written = predict_lib.predict_files(two_head, str(photos), str(out), write_npy=True,
                                    batch_size=8)
  assert len(written) == len(PHOTOS)
  for stem, (h, w, _) in PHOTOS.items():
    depth_png = Image.open(out / f"{stem}_depth.png")
    millimetres = np.asarray(depth_png)
    assert millimetres.shape == (h, w) and millimetres.dtype == np.uint16, stem
    metres = np.load(out / f"{stem}_depth.npy")
    assert metres.shape == (h, w) and metres.dtype == np.float32
    np.testing.assert_allclose(millimetres / 1000.0, metres, atol=5e-4)
    assert np.all((metres >= 0) & (metres <= 15.0))  # sigmoid output times max_depth
    assert np.asarray(Image.open(out / f"{stem}_depth_color.png")).shape == (h, w, 3)
    labels = np.asarray(Image.open(out / f"{stem}_semantic.png"))  # the 2-head's own head
    assert labels.shape == (h, w) and labels.min() >= 1 and labels.max() <= 40
    assert np.asarray(Image.open(out / f"{stem}_semantic_color.png")).shape == (h, w, 3)


def expected_outputs(workdir):
  """image -> the model's outputs for that photo, computed here step by step: the
  documented resize to the network shape (short side 32, multiples of 32), the restored
  model's eval-mode forward pass on a batch of 8 copies, depth resized back with PIL's
  bilinear (float) and labels as arg-max + 1 (NYU40 ids; only where no resize is needed).
  """
  loaded = trained_run.load(workdir)

  @jax.jit
  def semantic_logits(state, batch):
    net = nnx.merge(loaded.steps.eval_graph, state.params, state.model_state, copy=True)
    return net(semantics.model_inputs(batch, "none"))["semantic"]

  return functools.partial(_expected_outputs, loaded, semantic_logits)


def _expected_outputs(loaded, semantic_logits, image):
  h, w = image.shape[:2]
  shape = predict_lib.network_shape(h, w, 32)
  x = predict_lib.prepare_image(image, shape)
  batch = {"image": np.repeat(x[None], 8, 0), "semantic": np.full((8, *shape), -1, np.int16)}
  global_batch = data_parallel.to_global(batch, loaded.mesh)
  depth = data_parallel.fetch(loaded.steps.predict_step(loaded.state, global_batch))[0]
  back = np.asarray(Image.fromarray(depth.astype(np.float32)).resize((w, h), Image.BILINEAR))
  labels = np.argmax(data_parallel.fetch(semantic_logits(loaded.state, global_batch))[0], -1) + 1
  return back, (labels if (h, w) == shape else None)


# Depth is at most 15 m; the same forward pass on another batch layout and PIL's resize
# against ours differ by float32 rounding through ~10 layers of sums of ~100 terms:
# eps * sqrt(100) * 10 ~ 1e-5 relative.
DEPTH_ATOL_M = 15.0 * 1e-5


def test_predictions_are_the_models_own_for_each_photo(runs, photos, tmp_path):
  """Each photo's depth (and labels) are the model's on that photo, not a constant,
  not another photo's, not a channel-swapped or un-normalised input."""
  two_head, _ = runs
  out = tmp_path / "out"
  predict_lib.predict_files(two_head, str(photos), str(out), write_npy=True, batch_size=8)
  expected = expected_outputs(two_head)
  for stem, (h, w, fmt) in PHOTOS.items():
    with Image.open(photos / f"{stem}.{fmt}") as im:
      image = np.asarray(im.convert("RGB"))
    want_depth, want_labels = expected(image)
    metres = np.load(out / f"{stem}_depth.npy")
    assert metres.shape == (h, w) and np.ptp(metres) > 1e-3, stem
    np.testing.assert_allclose(metres, want_depth, rtol=0, atol=DEPTH_ATOL_M, err_msg=stem)
    if want_labels is not None:  # the square photo: the network's own size
      labels = np.asarray(Image.open(out / f"{stem}_semantic.png"))
      assert np.mean(labels == want_labels) > 0.99, stem  # near-ties may flip a pixel


def test_exif_rotation_is_applied(runs, tmp_path):
  """A photo stored sideways with EXIF orientation 6 (display: rotate 90 deg clockwise)
  gives the depth of the same photo stored upright."""
  two_head, _ = runs
  folder = tmp_path / "exif"
  folder.mkdir()
  stored = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(folder / "sideways.png", exif=exif)
  Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(folder / "upright.png")
  out = tmp_path / "out"
  predict_lib.predict_files(two_head, str(folder), str(out), write_npy=True)
  sideways, upright = (np.load(out / f"{s}_depth.npy") for s in ("sideways", "upright"))
  assert sideways.shape == upright.shape == (70, 45)
  assert np.asarray(Image.open(out / "sideways_depth.png")).shape == (70, 45)
  np.testing.assert_allclose(sideways, upright, rtol=0, atol=DEPTH_ATOL_M)
  # Not trivially equal: the other rotation gives another depth.
  Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=1))).save(folder / "other.png")
  predict_lib.predict_files(two_head, str(folder / "other.png"), str(out), write_npy=True)
  assert np.abs(np.load(out / "other_depth.npy") - upright).max() > 100 * DEPTH_ATOL_M


def test_semantic_input_given_or_two_stage(runs, photos, tmp_path):
  two_head, onehot = runs
  stage = predict_lib.predict_files(onehot, str(photos), str(tmp_path / "two_stage"),
                                  semantic_workdir=two_head, write_npy=True)
  assert len(stage) == len(PHOTOS)
  # The labels the first stage fed in are written in the format --semantic reads:
  # giving them back reproduces the two-stage depth exactly.
  given = predict_lib.predict_files(onehot, str(photos), str(tmp_path / "given"),
                                  semantic=str(tmp_path / "two_stage"), write_npy=True)
  for stem, (h, w, _) in PHOTOS.items():
    a = np.load(tmp_path / "two_stage" / f"{stem}_depth.npy")
    b = np.load(tmp_path / "given" / f"{stem}_depth.npy")
    assert a.shape == (h, w)
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert not any(p.endswith("_semantic.png") for p in sum(given.values(), []))

  # A label map that is all one class gives another depth than the predicted labels.
  labels_dir = tmp_path / "labels"
  labels_dir.mkdir()
  for stem, (h, w, _) in PHOTOS.items():
    np.save(labels_dir / f"{stem}.npy", np.full((h, w), 1, np.int16))
  predict_lib.predict_files(onehot, str(photos), str(tmp_path / "walls"),
                          semantic=str(labels_dir), write_npy=True)
  walls = np.load(tmp_path / "walls" / "wide_depth.npy")
  assert not np.allclose(walls, np.load(tmp_path / "two_stage" / "wide_depth.npy"))


def test_command_line_and_one_line_errors(runs, photos, tmp_path, capsys):
  two_head, onehot = runs

  def cli(*args):
    fv = predict.flags.FlagValues()
    predict.define_flags(fv)
    rest = fv(["predict", *args])
    return predict.run(fv, rest[1:])

  out = tmp_path / "cli"
  assert cli(f"--workdir={two_head}", f"--input={photos / 'wide.png'}", f"--out={out}") == 0
  assert sorted(os.listdir(out)) == ["wide_depth.png", "wide_depth_color.png",
                                     "wide_semantic.png", "wide_semantic_color.png"]
  capsys.readouterr()

  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  wrong_size = tmp_path / "wrong_size"
  wrong_size.mkdir()
  Image.fromarray(np.ones((10, 10), np.uint8)).save(wrong_size / "wide.png")
  out_of_range = tmp_path / "out_of_range"
  out_of_range.mkdir()
  Image.fromarray(np.full((45, 70), 41, np.uint8)).save(out_of_range / "wide.png")
  wide = f"--input={photos / 'wide.png'}"
  cases = [
      ([f"--workdir={tmp_path / 'none'}", wide, f"--out={out}"], "No workdir"),
      ([f"--workdir={two_head}", f"--input={bad}", f"--out={out}"], "Cannot read image"),
      ([f"--workdir={onehot}", wide, f"--out={out}"], "takes a semantic input"),
      ([f"--workdir={onehot}", wide, f"--out={out}", f"--semantic={wrong_size}"],
       "is 10x10 (HxW) but the image"),
      ([f"--workdir={onehot}", wide, f"--out={out}", f"--semantic={out_of_range}"],
       "labels outside 0..40"),
      ([f"--workdir={onehot}", wide, f"--out={out}", f"--semantic_workdir={onehot}"],
       "has no semantic head"),
      ([f"--workdir={two_head}", wide, f"--out={out}", "--checkpoint=best"], None),
  ]
  for args, message in cases:
    code = cli(*args)
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:  # the final step was evaluated: 'best' exists
      assert code == 0, err
      continue
    assert code == 1, args
    assert len(err) == 1 and message in err[0], err
  with pytest.raises(trained_run.UserError, match="No such file or folder"):
    predict_lib.list_inputs(str(tmp_path / "missing.png"))
