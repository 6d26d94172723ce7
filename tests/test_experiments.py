"""The experiments runner's config handling and paper-style table (no training)."""

import json
import os

import pytest

from smd_jax import paper
from smd_jax.evaluation import report, tables
from smd_jax.training import sweep

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "paper")


def test_overrides_and_demo_preset_apply(tmp_path):
  config = sweep.prepare_config(
      os.path.join(CONFIGS, "unet_1hot40.py"), str(tmp_path), "demo",
      ["num_train_steps=7", "optimizer.learning_rate=0.5", "model.encoder=efficientnet_b2"])
  assert config.num_train_steps == 7 and config.optimizer.learning_rate == 0.5
  assert config.model.encoder == "efficientnet_b2"
  assert config.semantic_transform == "onehot40"  # the row itself is kept
  assert config.data.resolution == 64 and config.data.synthetic.enabled
  # Synthetic runs of one sweep share a data set under the output directory.
  assert config.data.data_dir == os.path.join(str(tmp_path), "data", "tfds")


@pytest.mark.parametrize("bad, error", [("num_train_step=3", KeyError), ("no_equals", ValueError)])
def test_bad_overrides_raise(bad, error, tmp_path):
  with pytest.raises(error):
    sweep.prepare_config(os.path.join(CONFIGS, "unet_l1.py"), str(tmp_path), None, [bad])


def test_missing_config_file_is_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py"):
    sweep.load_config_file(str(tmp_path / "nope.py"))


def test_table_has_ours_and_the_published_row(tmp_path):
  workdir = tmp_path / "unet_2head"
  workdir.mkdir()
  for step, rmse in ((100, 9.0), (400, 1.2346)):  # the latest evaluation wins
    (workdir / f"eval_validation_{step}.json").write_text(json.dumps(
        {"step": step, "depth/rmse": rmse, "depth/rme": 0.3, "depth/log10": 0.1,
         "depth/delta1": 0.6, "depth/delta2": 0.8, "depth/delta3": 0.9,
         "semantic/miou": 0.25, "semantic/pixel_accuracy": None}))
  config = sweep.load_config_file(os.path.join(CONFIGS, "unet_2head.py"))
  results = {"unet_2head": report.final_results(str(workdir)), "unet_l1": None}
  configs = {"unet_2head": config,
             "unet_l1": sweep.load_config_file(os.path.join(CONFIGS, "unet_l1.py"))}
  lines = tables.markdown_table(results, configs).splitlines()
  assert lines[0].split("|")[4].strip() == "RMSE ↓"
  # Extra columns only where some run has the metric.
  assert "sem. mIoU" in lines[0] and "sem. acc" not in lines[0] and "contour F1" not in lines[0]
  ours = [c.strip() for c in lines[2].split("|")[1:-1]]
  assert ours[:4] == ["unet_2head", "ours", "400", "1.235"] and ours[-2:] == ["0.900", "0.250"]
  published = [c.strip() for c in lines[3].split("|")[1:-1]]
  assert published[1] == "paper T1 2-head"
  assert published[3] == f"{paper.PUBLISHED['unet_2head'].rmse:.3f}"
  assert [c.strip() for c in lines[4].split("|")[1:4]] == ["unet_l1", "ours", "–"]
