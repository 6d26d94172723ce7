"""A sweep over many configs: every config's problems reported at once before any
training, and one failed run not stopping the others (no training: the trainer is
replaced by a stand-in)."""

import json
import os

import pytest

from smd_jax.errors import UserError
from smd_jax.training import sweep

GOOD = "from configs import default\n\ndef get_config():\n  return default.get_config()\n"
# 100 px is not a multiple of the UNet's stride 32: a validation problem.
BAD_RESOLUTION = GOOD.replace("return default.get_config()",
                              "config = default.get_config()\n  config.data.resolution = 100\n"
                              "  return config")


def _write(folder, name, text):
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write(text)
  return path


def test_every_config_problem_is_reported_before_anything_runs(tmp_path):
  folder = str(tmp_path / "configs")
  good = _write(folder, "good.py", GOOD)
  bad1 = _write(folder, "bad1.py", BAD_RESOLUTION)
  broken = _write(folder, "broken.py", "def get_config(:\n")
  bad2 = _write(folder, "bad2.py", BAD_RESOLUTION)
  missing = os.path.join(folder, "missing.py")
  out = tmp_path / "sweep"
  with pytest.raises(UserError) as e:
    sweep.prepare_configs([good, bad1, broken, missing, bad2], str(out), None, [])
  message = str(e.value)
  assert "\n" not in message and good not in message
  # The same problem once, with both configs that have it, then the others.
  assert message.startswith("config.data.resolution=100 is not a multiple of 32"), message
  assert f"[{bad1}, {bad2}]" in message and message.count("not a multiple of 32") == 1
  assert "SyntaxError: " in message and f"[{broken}]" in message
  assert f"No config file {missing!r}." in message and f"[{missing}]" not in message
  assert not out.exists()  # nothing written before the user fixes the configs


def test_configs_that_would_share_a_workdir_are_refused(tmp_path):
  first = _write(str(tmp_path / "a"), "unet.py", GOOD)
  second = _write(str(tmp_path / "b"), "unet.py", GOOD)
  with pytest.raises(UserError, match=r"Configs named 'unet' would share the workdir") as e:
    sweep.prepare_configs([first, second], str(tmp_path / "sweep"), None, [])
  assert f"[{first}, {second}]" in str(e.value)


class _Trainer:
  """Stands in for `trainer.train_and_evaluate`: fails for the names in `fail`, else
  writes the final evaluation JSON a real run leaves and returns its numbers."""

  def __init__(self, fail=(), error=RuntimeError):
    self.fail, self.error, self.calls = set(fail), error, []

  def __call__(self, config, workdir):
    del config
    name = os.path.basename(workdir)
    self.calls.append(name)
    if name in self.fail:
      raise self.error(f"out of memory in {name}")
    result = {"step": 5, "depth/rmse": 0.25}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "eval_validation_5.json"), "w") as f:
      json.dump(result, f)
    return result


def test_a_failed_run_does_not_stop_the_sweep(tmp_path, monkeypatch):
  folder, out = str(tmp_path / "configs"), str(tmp_path / "sweep")
  paths = [_write(folder, f"{name}.py", GOOD) for name in ("first", "second")]
  fake = _Trainer(fail={"first"})
  monkeypatch.setattr(sweep.trainer, "train_and_evaluate", fake)
  with pytest.raises(UserError) as e:
    sweep.run(paths, out)
  assert fake.calls == ["first", "second"]  # the second still trained
  message = str(e.value)
  failure_file = os.path.join(out, "first", sweep.FAILURE_FILE)
  assert message.startswith("1 of 2 runs failed: first (RuntimeError: out of memory in first; "
                            f"see {failure_file})"), message
  with open(failure_file) as f:
    assert "Traceback" in f.read()
  with open(os.path.join(out, "results.md")) as f:
    table = f.read()
  assert "| second | ours | 5 |" in table and "- first: RuntimeError: out of memory" in table

  # The same command again retries only the failed run, and clears its failure note.
  fake = _Trainer()
  monkeypatch.setattr(sweep.trainer, "train_and_evaluate", fake)
  table = sweep.run(paths, out)
  assert fake.calls == ["first"] and not os.path.exists(failure_file)
  assert "| first | ours | 5 |" in table and "Failed runs" not in table


def test_ctrl_c_still_stops_the_sweep(tmp_path, monkeypatch):
  folder = str(tmp_path / "configs")
  paths = [_write(folder, f"{name}.py", GOOD) for name in ("first", "second")]
  fake = _Trainer(fail={"first"}, error=KeyboardInterrupt)
  monkeypatch.setattr(sweep.trainer, "train_and_evaluate", fake)
  with pytest.raises(KeyboardInterrupt):
    sweep.run(paths, str(tmp_path / "sweep"))
  assert fake.calls == ["first"]
