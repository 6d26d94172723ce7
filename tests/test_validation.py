"""Config validation (smd_jax/validation.py, smd_jax/config_rules.py): every field of every
config, set to a bad value of its kind, is one line naming it, for train and evaluate,
before anything is written; the rules between fields against hand-worked cases."""

from __future__ import annotations

import copy
import glob
import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from ml_collections import config_dict

from smd_jax import config_rules, validation
from smd_jax.convert import io as convert_io
from smd_jax.errors import UserError
from smd_jax.models import registry
from tests import subprocess_runs as runs
from tests.toy_models import ToyEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    os.path.relpath(p, ROOT) for p in
    [os.path.join(ROOT, "configs", "base.py")]
    + glob.glob(os.path.join(ROOT, "configs", "paper", "*.py"))
    + glob.glob(os.path.join(ROOT, "configs", "paper", "variants", "*.py"))
    if not p.endswith("__init__.py"))
DEVICES = 8
# init_from is read only where training starts; evaluate restores the checkpoint instead
# (a run whose init_from directory is gone later can still be evaluated).
TRAINING_ONLY = {"init_from"}


def load(path: str) -> config_dict.ConfigDict:
  return importlib.import_module(path[:-3].replace(os.sep, ".")).get_config()


def leaves(config: config_dict.ConfigDict, prefix: str = ""):
  """(dotted path, value, declared type) of every field, placeholders included."""
  for key in config.keys():
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value, config.get_type(key)


def bad_values(path: str, kind: type, a_file: str):
  """Values no field of this kind takes: the wrong type, out of every field's range, an
  unknown name, a file where a directory belongs (independent of the rules table)."""
  name = path.rsplit(".", 1)[-1]
  if name.endswith("_dir") or name == "init_from":
    return [a_file, 7]
  if kind is bool:
    return ["maybe", 1]
  if kind is int:
    return ["ten", -10**6, 2.5]
  if kind is float:
    return ["ten", -1e6, float("nan")]
  if kind is str:
    return ["no_such_name_zz", 7]
  if kind in (tuple, list):
    return ["ten", [-1]]
  raise AssertionError(f"field {path} of unexpected type {kind}")


def with_value(config, path: str, value) -> dict:
  """config as plain dicts (what a config.json gives) with `path` set to `value`."""
  tree = copy.deepcopy(config.to_dict())
  node = tree
  *parents, leaf = path.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value
  return tree


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("files") / "not_a_dir.txt"
  path.write_text("a file")
  return str(path)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_as_written_is_valid(path):
  config = load(path)
  for command in ("train", "evaluate"):
    assert validation.problems_of(config, validation.Context(command, num_devices=DEVICES)) == []


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_field_has_a_rule(path):
  """A new field needs its rule in smd_jax/config_rules.py FIELDS."""
  missing = [p for p, _, _ in leaves(load(path))
             if config_rules_rule(p) is None]
  assert not missing, f"fields without a rule in smd_jax/config_rules.py FIELDS: {missing}"


def config_rules_rule(path):
  return validation.rule_for(path, config_rules.FIELDS)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_bad_field_is_one_line_naming_it(path, a_file, tmp_path):
  """Every field, every bad value of its kind: one UserError line that names the field
  (nothing else raised), for train and evaluate; the workdir is not touched."""
  config = load(path)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("{}")
  before = runs.tree_snapshot(str(workdir))
  tried = 0
  for field, _, kind in leaves(config):
    for value in bad_values(field, kind, a_file):
      for command in ("train", "evaluate"):
        tree = with_value(config, field, value)
        if command == "evaluate" and field in TRAINING_ONLY:
          validation.validate_config(tree, command=command, workdir=str(workdir),
                                     num_devices=DEVICES)
          continue
        with pytest.raises(UserError) as e:
          validation.validate_config(tree, command=command, workdir=str(workdir),
                                     num_devices=DEVICES)
        message = str(e.value)
        assert "\n" not in message, message
        assert message.startswith(f"config.{field}="), (field, value, message)
        tried += 1
  assert tried > 100
  assert runs.tree_snapshot(str(workdir)) == before


def test_all_problems_in_one_line():
  config = load("configs/base.py")
  config.model.encoder = "efficientnet_b44"
  config.optimizer.learning_rate = -1e-3
  config.tasks.depth.weight = -1.0
  with pytest.raises(UserError) as e:
    validation.validate_config(config, command="train")
  message = str(e.value)
  assert message.startswith("config.model.encoder='efficientnet_b44' is not a known encoder "
                            "(did you mean 'efficientnet_b4'")
  assert "And 2 more problem(s), in: optimizer.learning_rate, tasks.depth.weight." in message
  assert "\n" not in message


def test_registries_are_read_by_reference(monkeypatch):
  """A name added to a registry is valid at once (no copy of the keys in the rules)."""
  config = load("configs/base.py")
  config.model.encoder = "toy"
  config.init_from = ""
  with pytest.raises(UserError, match="'toy' is not a known encoder"):
    validation.validate_config(config, command="train")
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)
  validation.validate_config(config, command="train")


@pytest.mark.parametrize("decoder,resolution,stride,nearest", [
    ("unet", 100, 32, "96 or 128"),  # 100 = 3*32 + 4
    ("unet", 20, 32, "32"),  # below one stride: only the next multiple
    ("deeplabv3", 100, 8, "96 or 104"),  # dilated encoder: output stride 8
])
def test_resolution_must_be_a_multiple_of_the_encoder_stride(decoder, resolution, stride,
                                                             nearest):
  config = load("configs/base.py")
  config.model.decoder = decoder
  config.data.resolution = resolution
  with pytest.raises(UserError) as e:
    validation.validate_config(config, command="train")
  assert f"is not a multiple of {stride}" in str(e.value) and f"use {nearest}." in str(e.value)
  config.data.resolution = resolution // stride * stride + stride
  validation.validate_config(config, command="train")


def test_batches_must_split_over_the_devices():
  config = load("configs/base.py")
  config.batch_size = 12
  with pytest.raises(UserError, match=r"config.batch_size=12 is not divisible by the 8 "
                                      r"devices; use 8 or 16\."):
    validation.validate_config(config, command="train", num_devices=8)
  # Evaluation splits only its own batch: the training batch does not matter there,
  # and --batch_size replaces config.eval_batch_size.
  validation.validate_config(config, command="evaluate", num_devices=8)
  with pytest.raises(UserError, match=r"--batch_size=6 is not divisible by the 4 devices"):
    validation.validate_config(config, command="evaluate", num_devices=4, eval_batch_size=6)
  validation.validate_config(config, command="evaluate", num_devices=4, eval_batch_size=8)


def _problems(tree, command="train"):
  return validation.problems_of(tree, validation.Context(command, num_devices=DEVICES))


def test_heads_must_fit_their_tasks():
  config = load("configs/paper/unet_2head.py").to_dict()
  config["model"]["heads"]["semantic"]["num_outputs"] = 20  # the task reads 40 classes
  assert [p.field for p in _problems(config)] == ["model.heads.semantic.num_outputs"]
  config["tasks"]["semantic"]["params"] = {"num_classes": 20}
  assert _problems(config) == []
  del config["model"]["heads"]["semantic"]
  assert [p.field for p in _problems(config)] == ["tasks.semantic"]
  config["model"]["heads"]["semantics"] = {"num_outputs": 20, "activation": "identity"}
  messages = [p.message for p in _problems(config)]
  assert "did you mean 'semantics'?" in messages[0] and "did you mean 'semantic'?" in messages[1]
  no_depth = load("configs/paper/unet_2head.py").to_dict()
  no_depth["tasks"]["semantic"]["kind"] = "semantic"
  no_depth["tasks"]["depth"]["kind"] = "contours"  # the depth head is now a 2-class task
  assert [p.field for p in _problems(no_depth)] == ["tasks", "tasks.depth.params.max_depth"]
  del no_depth["tasks"]["depth"]["params"]  # a contour task has no max_depth
  fields = [p.field for p in _problems(no_depth)]
  assert fields == ["model.heads.depth.num_outputs", "tasks"]


def test_task_and_loss_parameters_by_name():
  config = load("configs/paper/variants/unet_2head_depth_edges.py").to_dict()
  config["tasks"]["depth_edges"]["params"]["treshold"] = 10.0
  problems = _problems(config)
  assert [p.field for p in problems] == ["tasks.depth_edges.params.treshold"]
  assert "did you mean 'threshold'?" in problems[0].message
  dice_ce = load("configs/paper/unet_2head_dice_ce.py").to_dict()
  dice_ce["tasks"]["semantic"]["loss_params"]["smooth"] = 1e-3  # dice_ce passes it to dice
  assert _problems(dice_ce) == []
  dice_ce["tasks"]["semantic"]["loss_params"]["alpha"] = 0.7  # Tversky's, not Dice's
  problems = _problems(dice_ce)
  assert [p.field for p in problems] == ["tasks.semantic.loss_params.alpha"]
  assert "not a parameter of the 'dice_ce' loss" in problems[0].message
  ce = load("configs/paper/unet_2head.py").to_dict()
  ce["tasks"]["depth"]["params"]["class_order"] = "prevalence"  # a semantic task's field
  assert [p.field for p in _problems(ce)] == ["tasks.depth.params.class_order"]


def test_init_from_kinds(tmp_path, a_file):
  config = load("configs/base.py").to_dict()
  converted = tmp_path / "converted"  # the layout smd_jax.convert writes
  (converted / convert_io.STATE_DIR).mkdir(parents=True)
  (converted / convert_io.METADATA_FILE).write_text(json.dumps({"format": convert_io.FORMAT}))
  empty = tmp_path / "empty"
  empty.mkdir()
  cut = tmp_path / "cut"  # metadata cut short
  shutil.copytree(converted, cut)
  (cut / convert_io.METADATA_FILE).write_text('{"format": ')
  no_state = tmp_path / "no_state"
  no_state.mkdir()
  shutil.copy(converted / convert_io.METADATA_FILE, no_state)
  good = ["", None, "imagenet", "timm/efficientnet_b4.ra2_in1k",
          "timm/efficientnet_b4.ra2_in1k@" + "0" * 40, str(converted)]
  bad = [a_file, str(tmp_path / "gone"), "imagenett", "not a hub id", "/abs/not/there", 3,
         str(empty), str(cut), str(no_state)]
  for value in good:
    config["init_from"] = value
    assert _problems(config) == [], value
  for value in bad:
    config["init_from"] = value
    assert [p.field for p in _problems(config)] == ["init_from"], value
  config["init_from"] = "imagenett"
  assert "did you mean 'imagenet'?" in _problems(config)[0].message
  config["init_from"] = "imagenet"
  config["model"]["encoder"] = "efficientnet_b3"
  assert _problems(config) == []
  registry.ENCODERS["toy_no_weights"] = ToyEncoder
  try:
    config["model"]["encoder"] = "toy_no_weights"  # no ImageNet weights for it
    problems = _problems(config)
    assert [p.field for p in problems] == ["init_from"] and "has no weights" in problems[0].message
  finally:
    del registry.ENCODERS["toy_no_weights"]


def test_paths_and_their_kinds(tmp_path, a_file):
  config = load("configs/base.py").to_dict()
  config["data"]["data_dir"] = os.path.join(a_file, "tfds")  # under a file: cannot be made
  problems = _problems(config)
  assert [p.field for p in problems] == ["data.data_dir"]
  assert "which is a file" in problems[0].message
  config["data"]["data_dir"] = str(tmp_path / "new" / "tfds")  # made when needed
  assert _problems(config) == []
  with pytest.raises(UserError, match="--workdir .* is a file"):
    validation.validate_config(config, command="train", workdir=a_file)
  with pytest.raises(UserError, match="--workdir .* does not exist"):
    validation.validate_config(config, command="evaluate", workdir=str(tmp_path / "nowhere"))
  validation.validate_config(config, command="train", workdir=str(tmp_path / "a" / "new" / "run"))


def test_json_typos_missing_fields_and_types():
  """What a hand-edited config.json gives: a misspelt field, a missing one, "false"."""
  config = load("configs/base.py").to_dict()
  config["data"]["resolutoin"] = config["data"].pop("resolution")
  fields = [p.field for p in _problems(config, "evaluate")]
  assert fields == ["data.resolution", "data.resolutoin"]
  config = load("configs/base.py").to_dict()
  del config["batch_size"]
  config["data"]["synthetic"]["enabled"] = "false"
  problems = _problems(config, "evaluate")
  assert [p.field for p in problems] == ["batch_size", "data.synthetic.enabled"]
  assert "is missing" in problems[0].message and "not a boolean" in problems[1].message
  with pytest.raises(UserError, match="not a mapping of fields"):
    validation.validate_config([1, 2], command="evaluate")


def _one_line_exit(proc, workdir, before):
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr[-2000:]
  assert runs.tree_snapshot(workdir) == before
  return last


@pytest.mark.parametrize("flags,expect", [
    (["--config.model.encoder=efficientnet_b44"], "did you mean 'efficientnet_b4'"),
    (["--config.optimizer.learning_rate=-0.001", "--config.data.resolution=100"],
     "learning_rate=-0.001 is out of range; set it to a number > 0. And 1 more problem(s), "
     "in: data.resolution."),
    (["--config.init_from=/no/such/weights"], "config.init_from='/no/such/weights'"),
])
def test_train_command_stops_before_any_work(flags, expect, tmp_path):
  """`python -m smd_jax.train` with the demo config (it would make data in the workdir)."""
  workdir = str(tmp_path / "run")
  proc = subprocess.run([sys.executable, "-m", "smd_jax.train", "--config", "configs/default.py",
                         "--workdir", workdir, *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=False)
  last = _one_line_exit(proc, workdir, {})
  assert expect in last, last
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("change,expect", [
    (("model", "decoder", "unett"), "did you mean 'unet'"),
    (("data", "resolution", "64"), "config.data.resolution='64' is not an integer"),
])
def test_evaluate_command_checks_the_runs_config(change, expect, tmp_path):
  """`python -m smd_jax.evaluate` on a workdir whose config.json holds a bad value."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = load("configs/default.py").to_dict()
  section, name, value = change
  config[section][name] = value
  (workdir / "config.json").write_text(json.dumps(config))
  before = runs.tree_snapshot(str(workdir))
  proc = subprocess.run([sys.executable, "-m", "smd_jax.evaluate", "--workdir", str(workdir)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  last = _one_line_exit(proc, str(workdir), before)
  assert expect in last and "config.json" in last, last


def test_evaluate_compare_checks_every_run_first(tmp_path, capsys):
  """--compare: every workdir's config.json is checked before any run is evaluated."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from smd_jax import evaluate  # pylint: disable=g-import-not-at-top
  good, bad = tmp_path / "good", tmp_path / "bad"
  for workdir, loss in ((good, "l1"), (bad, "l2")):
    workdir.mkdir()
    config = load("configs/default.py").to_dict()
    config["tasks"]["depth"]["loss"] = loss
    (workdir / "config.json").write_text(json.dumps(config))
  before = [runs.tree_snapshot(str(w)) for w in (good, bad)]
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  rest = fv(["evaluate", "--compare", str(good), str(bad)])
  assert evaluate.run(fv, rest[1:]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: config.tasks.depth.loss='l2' is not a known loss (did you mean "
                        "'l1'?)") and err.count("\n") == 1, err
  assert os.path.join(str(bad), "config.json") in err
  assert [runs.tree_snapshot(str(w)) for w in (good, bad)] == before


def test_predict_checks_the_runs_config(tmp_path, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from smd_jax import predict  # pylint: disable=g-import-not-at-top
  workdir, out = tmp_path / "run", tmp_path / "out"
  workdir.mkdir()
  config = load("configs/default.py").to_dict()
  config["semantic_transform"] = "onehot41"
  (workdir / "config.json").write_text(json.dumps(config))
  fv = flags.FlagValues()
  predict.define_flags(fv)
  rest = fv(["predict", f"--workdir={workdir}", f"--input={tmp_path}", f"--out={out}"])
  assert predict.run(fv, rest[1:]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: config.semantic_transform='onehot41' is not a known semantic "
                        "transform (did you mean 'onehot40'") and err.count("\n") == 1, err
  assert not out.exists()


def test_experiments_check_every_config_first(tmp_path):
  from smd_jax.training import sweep  # pylint: disable=g-import-not-at-top
  out = tmp_path / "sweep"
  paths = [os.path.join(ROOT, "configs", "paper", "unet_l1.py"),
           os.path.join(ROOT, "configs", "paper", "deeplab_l1.py")]
  with pytest.raises(UserError) as e:  # 96 suits the UNet's stride 32 and DeepLabV3's 8
    sweep.prepare_configs(paths, str(out), "demo", ["data.resolution=100"])
  message = str(e.value)
  assert message.startswith("config.data.resolution=100 is not a multiple of 32") and (
      "[" + paths[0] + "]") in message and "\n" not in message
  sweep.prepare_configs(paths, str(out), "demo", ["data.resolution=96"])
  assert not out.exists()
