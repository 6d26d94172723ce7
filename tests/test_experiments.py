"""The experiments runner's config handling and paper-style table (no training)."""

import json
import os

import pytest

from smd_jax import cli, experiments, paper
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


def _command_line(argv):
  """experiments' parse of `argv` (without the program name), as `python -m` does it."""
  rest, config_args = experiments.split_config_overrides(["experiments"] + argv)
  flag_values, paths = cli.parse_argv(experiments.define_flags, rest[1:], usage="")
  return flag_values, paths, config_args


def test_config_flag_overrides_reach_every_config(tmp_path):
  paths = [os.path.join(CONFIGS, name) for name in ("unet_l1.py", "unet_2head.py")]
  flag_values, got_paths, config_args = _command_line(
      ["--out", str(tmp_path), paths[0], "--config.num_train_steps=7", "--preset", "demo",
       "--config.optimizer.learning_rate", "1", paths[1], "--noconfig.data.synthetic.enabled",
       "--config.model.encoder=efficientnet_b2", "--set", "seed=3"])
  assert got_paths == paths and flag_values.preset == "demo" and flag_values.set == ["seed=3"]
  configs = sweep.prepare_configs(got_paths, flag_values.out, flag_values.preset,
                                  flag_values.set, config_args=config_args)
  assert list(configs) == ["unet_l1", "unet_2head"]
  for config in configs.values():
    assert config.num_train_steps == 7 and config.model.encoder == "efficientnet_b2"
    # config_flags parses by the field's type: "1" for a float field is 1.0, a float.
    assert config.optimizer.learning_rate == 1.0
    assert isinstance(config.optimizer.learning_rate, float)
    assert config.data.synthetic.enabled is False  # --noconfig.* after the demo preset's True
    assert config.seed == 3 and config.data.resolution == 64  # --set and the preset kept


@pytest.mark.parametrize("spelling", [["--config.num_train_steps=9"],
                                      ["--config.num_train_steps", "9"],
                                      ["--set", "num_train_steps=9"],
                                      ["--set=num_train_steps=9"]])
def test_config_flag_and_set_spellings_agree(spelling, tmp_path):
  path = os.path.join(CONFIGS, "unet_l1.py")
  flag_values, paths, config_args = _command_line(["--out", str(tmp_path)] + spelling + [path])
  assert paths == [path]
  config, = sweep.prepare_configs(paths, flag_values.out, None, flag_values.set,
                                  config_args=config_args).values()
  assert config.num_train_steps == 9


@pytest.mark.parametrize("bad, match", [("--config.num_train_step=3", "no such config field"),
                                        ("--config.num_train_steps=x", "num_train_steps"),
                                        ("--config.num_train_steps", "num_train_steps")])
def test_bad_config_flag_overrides_are_one_line_errors(bad, match, tmp_path, capsys):
  path = os.path.join(CONFIGS, "unet_l1.py")
  out = tmp_path / "runs"
  flag_values, paths, config_args = _command_line(["--out", str(out), path, bad])
  assert experiments.run(flag_values, paths, config_args) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
  assert not out.exists()  # checked before anything is written


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
