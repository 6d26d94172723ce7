"""Bad input to training: one line that says what is wrong and what to do; workdir untouched."""

import os
import subprocess
import sys

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
  cases = [("--config.data.resolutoin=32", 'Did you mean "resolution"'),
           (f"--config.data.manual_dir={tmp_path / 'nothing'}", "No raw HyperSim frames")]
  for flag, pattern in cases:
    rc, out, err = runs.finish(runs.start_training(
        workdir, flag, f"--config.data.data_dir={tmp_path / 'tfds'}"), timeout=300)
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
