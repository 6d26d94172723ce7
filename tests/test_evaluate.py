"""python -m smd_jax.evaluate: exact metrics over a split, breakdown, tables, keep-best, errors.

A toy-encoder 2-head model (depth + NYU40 semantics) trains two steps with the
real trainer on a tiny procedural data set (11 validation frames at 32x32: the
evaluation batch of 8 does not divide the split). The evaluation is then checked
against NumPy: predictions made in one batch of 16 with the trainer's
`predict_step`, metrics pooled over all pixels with the formulas written out here.
"""

import csv
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import base
from smd_jax import evaluate, paper, semantics
from smd_jax.data import batching, datasets
from smd_jax.evaluation import report
from smd_jax.inference import trained_run
from smd_jax.models import registry
from smd_jax.training import checkpoints, data_parallel, trainer
from tests import toy_config
from tests.toy_models import ToyEncoder

NUM_FRAMES = dict(train=2, validation=11, test=3)


def tiny_config(data_root, *, transform="none", semantic_head=True, paper_row=None,
                num_frames=NUM_FRAMES):
  """The demo config at toy size: toy encoder (registered as 'toy'), 32x32, 2 steps."""
  config = toy_config.get_config()  # toy encoder, 32x32, batch 8
  config.model.decoder_channels = (16, 8, 8, 8, 8)
  config.data.synthetic.enabled = True
  config.data.synthetic.num_frames = dict(num_frames)
  config.data.data_dir = os.path.join(data_root, "tfds")
  config.data.manual_dir = os.path.join(data_root, "raw")
  config.num_train_steps = 2
  config.checkpoint_every_steps = 1
  config.eval_every_steps = 1  # step 1 is evaluated (and keeps its metrics) before step 2
  config.keep_checkpoints = 1
  config.num_images = 3
  config.semantic_transform = transform
  if semantic_head:
    base.add_semantic_head(config)
  config.paper_row = paper_row
  return config


@pytest.fixture(scope="module")
def toy_encoder():
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(registry.ENCODERS, "toy", ToyEncoder)
    yield


@pytest.fixture(scope="module")
def run(toy_encoder, tmp_path_factory):
  """A trained 2-head workdir: (workdir, config, final training results)."""
  root = tmp_path_factory.mktemp("evaluate")
  config = tiny_config(str(root / "data"), paper_row="unet_2head")
  workdir = str(root / "unet_2head")
  results = trainer.train_and_evaluate(config, workdir)
  return workdir, config, results


# --------------------------------------------------------------------------
# The NumPy reference: formulas written out, pooled over every pixel of the split.


def numpy_label_contours(label):
  """3x3 dilation != erosion, pixels outside the image left out (as OpenCV)."""
  x = label.astype(np.float64)
  hi = np.pad(x, 1, constant_values=-np.inf)
  lo = np.pad(x, 1, constant_values=np.inf)
  win = lambda a: np.lib.stride_tricks.sliding_window_view(a, (3, 3))
  return win(hi).max(axis=(-1, -2)) > win(lo).min(axis=(-1, -2))


def numpy_near(label, radius=2):
  c = np.pad(numpy_label_contours(label), radius)
  size = 2 * radius + 1
  return np.lib.stride_tricks.sliding_window_view(c, (size, size)).any(axis=(-1, -2))


def numpy_depth_metrics(pred, gt):
  """Pooled depth metrics over 1-D arrays of valid pixels (metres)."""
  p = np.maximum(pred.astype(np.float64), 1e-3)
  g = gt.astype(np.float64)
  ratio = np.maximum(p / g, g / p)
  return {"rmse": np.sqrt(np.mean((p - g) ** 2)), "abs_rel": np.mean(np.abs(p - g) / g),
          "rme": np.mean(np.abs(p - g) / p),
          "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
          **{f"delta{i}": np.mean(ratio < 1.25**i) for i in (1, 2, 3)}}


def reference(loaded, source):
  """Per-pixel predictions of the whole split in one padded batch of 16, then NumPy metrics."""
  n = len(source)
  examples = [datasets.select_arrays(source[i]) for i in range(n)]
  batch = batching.pad_batch(examples, 16, examples[0])
  mesh = loaded.mesh
  depth = data_parallel.fetch(loaded.steps.predict_step(loaded.state, data_parallel.to_global(batch, mesh)))

  @jax.jit
  def semantic_logits(state, batch):
    net = nnx.merge(loaded.steps.eval_graph, state.params, state.model_state, copy=True)
    return net(semantics.model_inputs(batch, loaded.config.semantic_transform))["semantic"]

  labels = np.argmax(data_parallel.fetch(semantic_logits(loaded.state,
                                                    data_parallel.to_global(batch, mesh))), -1)
  gt = np.clip(batch["depth"][:n], 0, 15.0)
  valid = np.isfinite(gt) & (gt > 0)
  pred = depth[:n]
  out = {f"depth/{k}": v for k, v in numpy_depth_metrics(pred[valid], gt[valid]).items()}

  # mIoU over classes present in ground truth or prediction; NYU40 id = class + 1.
  sem = batch["semantic"][:n].astype(np.int64)
  labelled = (sem >= 1) & (sem <= 40)
  cm = np.zeros((40, 40))
  np.add.at(cm, (sem[labelled] - 1, labels[:n][labelled]), 1)
  tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
  out["semantic/miou"] = np.mean(tp[union > 0] / union[union > 0])
  out["semantic/pixel_accuracy"] = tp.sum() / cm.sum()

  near = np.stack([numpy_near(s) for s in sem])
  regions = {"depth_0-2m": (gt >= 0) & (gt < 2), "depth_2-5m": (gt >= 2) & (gt < 5),
             "depth_5-10m": (gt >= 5) & (gt < 10), "depth_10-15m": (gt >= 10) & (gt <= 15),
             "near_contours": near, "off_contours": ~near}
  for region, mask in regions.items():
    m = valid & mask
    out[f"breakdown/{region}/fraction"] = m.sum() / valid.sum()
    if m.any():
      for k, v in numpy_depth_metrics(pred[m], gt[m]).items():
        out[f"breakdown/{region}/{k}"] = v
  per_image = [numpy_depth_metrics(pred[i][valid[i]], gt[i][valid[i]])["rmse"] for i in range(n)]
  return out, per_image


def test_evaluate_matches_numpy_over_the_whole_split(run):
  workdir, config, trained = run
  got = report.evaluate_workdir(workdir, per_image=True)
  loaded = trained_run.load(workdir)
  source = report.load_split(loaded.config, workdir, "validation")
  assert len(source) == 11 and got.results["num_examples"] == 11
  want, per_image = reference(loaded, source)
  for key, value in want.items():
    assert got.results[key] == pytest.approx(value, rel=2e-5, abs=1e-6), key
  # The bins cover every depth; near + off contours is every valid pixel.
  bins = [got.results[f"breakdown/{b}/fraction"] for b in ("depth_0-2m", "depth_2-5m",
                                                           "depth_5-10m", "depth_10-15m")]
  assert sum(bins) == pytest.approx(1.0)
  assert 0 < got.results["breakdown/near_contours/fraction"] < 1
  # The same numbers as the trainer's own final evaluation (same step: 2).
  assert got.results["step"] == trained["step"] == 2
  for key in ("depth/rmse", "depth/delta1", "semantic/miou"):
    assert got.results[key] == pytest.approx(trained[key], rel=1e-5), key

  # Files: JSON (null for NaN), Markdown in the paper's column order, CSV worst first, grid.
  with open(got.paths["json"]) as f:
    saved = json.load(f)
  assert saved["depth/rmse"] == pytest.approx(got.results["depth/rmse"])
  assert got.paths["json"].endswith("eval_validation_2.json")
  with open(got.paths["markdown"]) as f:
    table = f.read()
  header = table.splitlines()[2]
  assert [h.strip() for h in header.split("|")[4:10]] == [h for _, h in paper.COLUMNS]
  assert "paper T1 2-head" in table and "near_contours" in table and "sem. mIoU" in header
  with open(got.paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 11 and {"scene", "camera", "frame"} <= set(rows[0])
  rmses = [float(r["rmse"]) for r in rows]
  assert rmses == sorted(rmses, reverse=True)
  by_index = {int(r["index"]): float(r["rmse"]) for r in rows}
  np.testing.assert_allclose([by_index[i] for i in range(11)], per_image, rtol=2e-5)
  grid = np.asarray(Image.open(got.paths["grid"]))
  # 3 rows of RGB | labels | GT | prediction | error | predicted labels, under a title band.
  # Panels are enlarged 4x to 128 px.
  assert grid.shape[1] == 6 * 128 + 5 * 4 and grid.shape[0] > 3 * 128 + 2 * 4


def test_test_split_best_checkpoint_and_other_batch_size(run):
  workdir, config, trained = run
  # Both evaluated steps' RMSEs, read from the run's log (step 1: its mid-run evaluation;
  # step 2: the final one), whether or not step 1's checkpoint survived keep_checkpoints.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  rmse = {r["step"]: r["validation/depth/rmse"] for r in logged if "validation/depth/rmse" in r}
  assert sorted(rmse) == [1, 2] and rmse[2] == pytest.approx(trained["depth/rmse"], rel=1e-6)
  want_best = min((1, 2), key=lambda s: (rmse[s], -s))  # lower is better; ties: the later
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  steps, best = ckpt.all_steps(), ckpt.best_step("depth/rmse")
  ckpt.close()
  # keep_checkpoints=1 keeps the latest (2) and the best of the two evaluated steps.
  # (Step 1 can outlive a better step 2 until the next save: 2 was saved before its
  # evaluation, when 1 was the best one ranked.)
  assert best == want_best and {2, want_best} <= set(steps) <= {1, 2}

  got = report.evaluate_workdir(workdir, checkpoint="best", split="test", batch_size=16,
                                num_images=0)
  assert got.results["step"] == best and got.results["num_examples"] == NUM_FRAMES["test"]
  assert got.results["split"] == "test" and "paper T1" not in got.table  # published: validation
  # The test split's numbers: the NumPy formulas on the best checkpoint's predictions.
  loaded = trained_run.load(workdir, checkpoint="best")
  source = report.load_split(loaded.config, workdir, "test")
  assert len(source) == NUM_FRAMES["test"]
  want, _ = reference(loaded, source)
  for key in ("depth/rmse", "depth/abs_rel", "depth/rme", "depth/log10", "depth/delta1",
              "semantic/miou", "semantic/pixel_accuracy"):
    # float32 sums of a few thousand pixels against float64: ~1e-7 * sqrt(n) relative.
    assert got.results[key] == pytest.approx(want[key], rel=2e-5, abs=1e-6), key
  with open(os.path.join(workdir, f"eval_test_{best}.json")) as f:
    assert json.load(f)["depth/rmse"] == pytest.approx(want["depth/rmse"], rel=2e-5)
  assert "grid" not in got.paths


def test_keep_best_keeps_the_last_n_and_the_best(tmp_path):
  state = {"w": np.ones(3, np.float32)}
  ckpt = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2, save_interval_steps=1,
                                  best_metric="depth/rmse")
  rmse = {1: 5.0, 2: 1.0, 3: None, 4: 3.0, 5: float("nan"), 6: None}  # None: not evaluated
  for step, value in rmse.items():
    ckpt.save(step, state, metrics=None if value is None else {"depth/rmse": value,
                                                                "depth/delta1": 0.1 * step})
  ckpt.close()
  reopened = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  assert reopened.all_steps() == [2, 5, 6]  # the best (2) and the last two
  assert reopened.best_step() == 2 and reopened.metrics(2)["depth/rmse"] == 1.0
  assert reopened.best_step("depth/delta1") == 5  # higher is better for delta
  assert reopened.metrics(6) == {}
  reopened.close()
  assert checkpoints.best_mode("semantic/miou") == "max"
  assert checkpoints.best_mode("depth/abs_rel") == "min"


def test_compare_tables_workdirs_with_published_rows(run, tmp_path):
  workdir, _, _ = run
  other = tmp_path / "unet_l1"
  other.mkdir()
  with open(os.path.join(workdir, "config.json")) as f:
    other_config = json.load(f)
  other_config["paper_row"] = "unet_l1"
  (other / "config.json").write_text(json.dumps(other_config))
  (other / "eval_validation_7.json").write_text(json.dumps({"step": 7, "depth/rmse": 2.5}))
  table = report.compare([workdir, str(other)], evaluate_missing=False)
  lines = table.splitlines()
  assert "RMSE near contours" in lines[0]
  names = [line.split("|")[1].strip() for line in lines[2:]]
  assert names == [os.path.normpath(workdir), "", str(other), ""]
  assert "paper T1 ℓ1" in lines[5] and lines[4].split("|")[4].strip() == "2.500"


def test_command_line_and_one_line_errors(run, tmp_path, capsys):
  workdir, _, _ = run

  def cli(*args):
    fv = evaluate.flags.FlagValues()
    evaluate.define_flags(fv)
    rest = fv(["evaluate", *args])
    return evaluate.run(fv, rest[1:])

  assert cli(f"--workdir={workdir}", "--checkpoint=2", "--num_images=1") == 0
  out = capsys.readouterr().out
  assert "| unet_2head | ours | 2 |" in out and "eval_validation_2.md" in out

  before = sorted(os.listdir(workdir))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  mismatched = tiny_config(str(tmp_path / "data"), transform="onehot40")
  unranked = tmp_path / "unranked"  # checkpoints saved without metrics
  unranked.mkdir()
  (unranked / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  plain = checkpoints.Checkpointer(str(unranked), save_interval_steps=1)
  plain.save(1, {"w": np.ones(2, np.float32)})
  plain.close()
  cases = [
      ([f"--workdir={tmp_path / 'nowhere'}"], "No workdir"),
      ([f"--workdir={unranked}", "--checkpoint=best"], "has a stored 'depth/rmse'"),
      ([f"--workdir={empty}"], "No checkpoint in"),
      ([f"--workdir={workdir}", "--checkpoint=9"], "No checkpoint for step 9"),
      ([f"--workdir={workdir}", "--checkpoint=soon"], "latest, best or a step"),
  ]
  for args, message in cases:
    assert cli(*args) == 1, args
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
  with pytest.raises(trained_run.UserError, match="does not match checkpoint 2.*shape"):
    trained_run.load(workdir, config=mismatched, checkpoint=2)
  assert sorted(os.listdir(workdir)) == before  # nothing written or damaged
  assert report.final_results(workdir)["step"] == 2
