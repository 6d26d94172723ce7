"""Bad input to training: one line that says what is wrong and what to do; workdir untouched."""

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest


from smd_jax import errors
from smd_jax.data import datasets
from smd_jax.models import registry
from smd_jax.training import checkpoints, data_parallel, multihost, steps as steps_lib, trainer
from tests import subprocess_runs as runs, toy_config
from tests.toy_models import ToyEncoder


@pytest.fixture
def config(monkeypatch, tmp_path):
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)
  config = toy_config.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  return config


@pytest.fixture(scope="module")
def built_data(tmp_path_factory):
  """The dummy frames built at 32 px (the toy config's resolution)."""
  data_dir = str(tmp_path_factory.mktemp("built") / "tfds")
  data = toy_config.get_config().data
  data.data_dir = data_dir
  datasets.load_data_sources(data, workdir="unused")
  return data_dir


def _fails_cleanly(config, workdir, *patterns):
  before = runs.tree_snapshot(workdir)
  with pytest.raises(errors.UserError) as e:
    trainer.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "\n" not in message
  for pattern in patterns:
    assert pattern in message, message
  assert runs.tree_snapshot(workdir) == before
  return message


def test_missing_data_directory(config, tmp_path):
  config.data.manual_dir = str(tmp_path / "no_such_dir")
  _fails_cleanly(config, str(tmp_path / "run"), "No raw HyperSim frames at",
                 "no_such_dir", "--config.data.manual_dir")
  assert not os.path.exists(tmp_path / "run")


def test_empty_data_directory(config, tmp_path):
  os.makedirs(tmp_path / "empty")
  config.data.manual_dir = str(tmp_path / "empty")
  _fails_cleanly(config, str(tmp_path / "run"), "holds no HyperSim scene folders (ai_VVV_NNN)")
  assert not os.path.exists(tmp_path / "run")


def test_data_built_at_another_resolution(config, built_data, tmp_path):
  config.data.data_dir = built_data
  config.data.manual_dir = None  # only the built data set
  config.data.resolution = 48
  _fails_cleanly(config, str(tmp_path / "run"), "no data set is built at resolution 48",
                 "holds the data set at resolution 32", "--config.data.resolution=32")
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("field,value,pattern", [
    ("model.encoder", "efficientnet_b9", "Unknown encoder 'efficientnet_b9'"),
    ("model.decoder", "fpn", "Unknown decoder 'fpn'"),
    ("semantic_transform", "onehot41", "onehot41"),
    ("batch_size", 12, "batch_size=12 is not divisible by the 8 devices"),
])
def test_bad_model_or_batch_settings(config, tmp_path, field, value, pattern):
  parent, name = (["", field] if "." not in field else field.rsplit(".", 1))
  node = config
  for part in filter(None, parent.split(".")):
    node = node[part]
  node[name] = value
  _fails_cleanly(config, str(tmp_path / "run"), pattern)
  assert not os.path.exists(tmp_path / "run")


def _workdir_with_checkpoint(config, workdir):
  """A workdir as training leaves it: config.json and checkpoint 3 of `config`'s model."""
  mesh = data_parallel.make_mesh()
  _, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0), 10, mesh)
  trainer.write_config(config, workdir)
  ckpt = checkpoints.Checkpointer(workdir, save_interval_steps=1, async_save=False)
  assert ckpt.save(3, state, force=True)
  ckpt.close()


@pytest.mark.parametrize("change,pattern", [
    (("model", "decoder_channels", (16, 8, 8, 8, 8)), "differ in shape"),
    (("optimizer", "name", "sgd"), "only in the checkpoint"),
])
def test_checkpoint_of_another_config(config, built_data, tmp_path, change, pattern):
  config.data.data_dir = built_data
  workdir = str(tmp_path / "run")
  _workdir_with_checkpoint(config, workdir)
  section, name, value = change
  config[section][name] = value
  message = _fails_cleanly(config, workdir, "does not match checkpoint 3", pattern,
                           "Use a new --workdir")
  assert os.path.join(workdir, "config.json") in message


def test_command_line_errors_are_one_line(tmp_path):
  """Through `python -m smd_jax.train`: no traceback, exit status 1, nothing written."""
  workdir = str(tmp_path / "run")
  cases = [("--config.data.resolutoin=32", {}, 'Did you mean "resolution"'),
           (f"--config.data.manual_dir={tmp_path / 'nothing'}", {}, "No raw HyperSim frames"),
           # A switch that the model code reads (when tracing, not at import).
           ("--config.seed=0", {"SMD_POOLING_DOT": "yes"}, "SMD_POOLING_DOT must be 1")]
  for flag, env, pattern in cases:
    rc, out, err = runs.finish(runs.start_training(
        workdir, flag, f"--config.data.data_dir={tmp_path / 'tfds'}", env=env), timeout=300)
    assert rc == 1, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and pattern in last, err[-2000:]
    assert not os.path.exists(workdir)


def test_incomplete_multi_process_flags():
  with pytest.raises(errors.UserError, match="need all of --coordinator_address"):
    multihost.initialize("127.0.0.1:1234", None, None)
  with pytest.raises(errors.UserError, match=r"--process_id=2 must be in \[0, 2\)"):
    multihost.initialize("127.0.0.1:1234", 2, 2)


@pytest.mark.parametrize("module", ["smd_jax.train", "smd_jax.evaluate"])
def test_missing_config_file_is_one_line(module, tmp_path):
  """A --config path that does not exist: one line naming it, exit status 1."""
  missing = str(tmp_path / "no_such_config.py")
  proc = subprocess.run([sys.executable, "-m", module, "--config", missing,
                         "--workdir", str(tmp_path / "run")],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Cannot load the config") and missing in last, last


# ---------------------------------------------------------------------------------
# Damaged input files, one per file input of each command: one line, nothing written.


def _damaged_weights(tmp_path):
  """Weights files that are neither safetensors nor a PyTorch state dict."""
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  good = tmp_path / "good.safetensors"
  st_numpy.save_file({"conv_stem.weight": np.ones((8, 3, 3, 3), np.float32)}, str(good))
  files = {"garbage.safetensors": b"\x00\x01 not safetensors",
           "cut.safetensors": good.read_bytes()[:good.stat().st_size // 2],
           "garbage.pth": b"PK\x03\x04 not a zip archive",
           "cut.pth": b""}
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  torch.save([1, 2, 3], str(tmp_path / "list.pth"))  # a pickle, but no state dict
  return sorted(files) + ["list.pth"]


def test_convert_damaged_weights_are_one_line(tmp_path, capsys):
  from smd_jax.convert import __main__ as convert_cli  # pylint: disable=g-import-not-at-top
  pytest.importorskip("torch")
  for name in _damaged_weights(tmp_path):
    out = tmp_path / f"out_{name}"
    code = convert_cli.main(["--from", "timm", "--arch", "efficientnet_b2",
                             str(tmp_path / name), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, name
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert name in err, err
    assert not out.exists()


def test_damaged_init_from_directory_is_one_line(tmp_path):
  """A converted directory whose arrays are damaged: found when loaded, one line."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from smd_jax.convert import converters, io  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "converted"
  (directory / io.STATE_DIR).mkdir(parents=True)
  (directory / io.STATE_DIR / "garbage").write_bytes(b"\x00" * 10)
  (directory / io.METADATA_FILE).write_text(json.dumps({"format": io.FORMAT, "arch": "toy"}))
  registry.ENCODERS["toy"] = ToyEncoder
  try:
    model_config = ml_collections.ConfigDict(dict(
        encoder="toy", decoder="unet", decoder_channels=(8,) * 5,
        heads={"depth": {"num_outputs": 1}}))
    model = registry.build_model(model_config, rngs=nnx.Rngs(0))
  finally:
    del registry.ENCODERS["toy"]
  config = ml_collections.ConfigDict(dict(model=dict(encoder="toy"), init_from=str(directory)))
  workdir = tmp_path / "run"
  with pytest.raises(errors.UserError) as e:
    converters.maybe_init_from(model, config, str(workdir))
  assert "\n" not in str(e.value) and str(directory) in str(e.value)
  assert not workdir.exists()


@pytest.mark.parametrize("content,pattern", [
    ('{"seed": 0, "data": {"resolu', "Cannot read"),  # cut short
    ("[1, 2, 3]", "holds a list, not the config's fields"),
    ("\x00\x01\x02", "Cannot read"),
])
def test_evaluate_damaged_config_json(content, pattern, tmp_path, capsys):
  from smd_jax import evaluate  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(content)
  before = runs.tree_snapshot(str(workdir))
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  rest = fv(["evaluate", f"--workdir={workdir}"])
  assert evaluate.run(fv, rest[1:]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and pattern in err, err
  assert "--config CONFIG.py" in err
  assert runs.tree_snapshot(str(workdir)) == before


def _cut_config(tmp_path, where: str):
  """configs/default.py cut short: before get_config ("def") or inside it ("body")."""
  path = tmp_path / f"cut_{where}.py"
  text = open(os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")).read()
  head = text[:text.index("def get_config")]
  path.write_text(head if where == "def" else head + "def get_config():\n  return dict(a=(1,\n")
  return str(path)


@pytest.mark.parametrize("where", ["def", "body"])
def test_truncated_config_file_evaluate(where, tmp_path, capsys):
  from smd_jax import cli, evaluate  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  workdir.mkdir()
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  argv = ["evaluate", f"--workdir={workdir}", f"--config={_cut_config(tmp_path, where)}"]
  with mock.patch.object(sys, "argv", argv):
    try:  # as the command parses (a config file may load while parsing or when read)
      code = evaluate.run(fv, cli.parse_flags(argv, fv)[1:])
    except SystemExit as e:
      code = e.code
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: Cannot load the config") and err.count("\n") == 1, err
  assert os.listdir(workdir) == []


def test_truncated_config_file_train(tmp_path):
  """Through `python -m smd_jax.train`: the config file cut short mid-way."""
  workdir = str(tmp_path / "run")
  proc = subprocess.run([sys.executable, "-m", "smd_jax.train", "--config",
                         _cut_config(tmp_path, "def"),
                         "--workdir", workdir], capture_output=True, text=True, timeout=300,
                        check=False, cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: Cannot load the config")
  assert not os.path.exists(workdir)


def test_predict_damaged_label_maps_and_images(tmp_path):
  """--semantic label maps and --input photos that are damaged: one-line UserErrors."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from smd_jax.inference import predict_lib  # pylint: disable=g-import-not-at-top
  good = tmp_path / "good.png"
  Image.fromarray(np.full((40, 60), 3, np.uint8)).save(good)
  photo = tmp_path / "photo.png"
  Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(photo)
  cut_png = tmp_path / "cut.png"
  cut_png.write_bytes(good.read_bytes()[:60])  # header intact, pixels cut off
  garbage_npy = tmp_path / "garbage.npy"
  garbage_npy.write_bytes(b"\x93NUMPY garbage")
  pickled = tmp_path / "pickled.npy"
  np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  not_png = tmp_path / "text.png"
  not_png.write_text("a text file")
  for path in (cut_png, garbage_npy, pickled, not_png):
    with pytest.raises(errors.UserError) as e:
      predict_lib.read_semantic(str(path), (40, 60))
    assert "\n" not in str(e.value) and str(path) in str(e.value), str(e.value)
  cut_photo = tmp_path / "cut_photo.png"
  cut_photo.write_bytes(photo.read_bytes()[:70])
  for path in (cut_photo, not_png):
    with pytest.raises(errors.UserError) as e:
      predict_lib.read_image(str(path))
    assert "\n" not in str(e.value) and "Cannot read image" in str(e.value)
