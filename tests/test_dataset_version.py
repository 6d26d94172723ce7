"""A data set built by another version of the `hypersim` builder is never read.

The old builds here are made by the current builder with its VERSION patched to
3.0.0, the previous version's zstd-compressed array_record shards instead of
uncompressed ones, and every stored depth value replaced by a sentinel, so any
example that comes back from the old build is recognisable. A user's HyperSim
build must be refused with one line naming the version found and a rebuild
command that works; the procedural demo set is rebuilt.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from smd_jax import errors
from smd_jax.data import datasets
from smd_jax.evaluation import report
from smd_jax.models import registry
from smd_jax.training import trainer
from tests import subprocess_runs as runs, toy_config
from tests.toy_models import ToyEncoder
from tfds_hypersim import build as build_cli, hypersim_dataset_builder as hdb, upgrade

OLD = "3.0.0"
NEW = "3.1.0"  # the builder's version (a change of stored format that is not bumped fails)
SENTINEL = 1234.5  # metres; exactly representable in float32, far beyond any room


def _build_old(monkeypatch, data_dir: str, manual_dir: str, resolution: int) -> None:
  """Builds `res{resolution}` into `data_dir` as builder version OLD, depth = SENTINEL."""
  process = hdb._process  # pylint: disable=protected-access

  def marked(*args, **kwargs):
    result = process(*args, **kwargs)
    if result.example is not None:
      result.example["depth"] = np.full_like(result.example["depth"], SENTINEL)
    return result

  with monkeypatch.context() as m:
    m.setattr(hdb.Builder, "VERSION", tfds.core.Version(OLD))
    m.setattr(hdb, "_process", marked)
    builder = hdb.Builder(config=hdb.hypersim_config(resolution), data_dir=data_dir,
                          num_workers=1, record_compression="zstd")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  assert os.path.isfile(os.path.join(data_dir, "hypersim", f"res{resolution}", OLD,
                                     "dataset_info.json"))


def _assert_no_old_example(sources) -> None:
  assert sources and all(len(src) for src in sources.values())
  for split, src in sources.items():
    for i in range(len(src)):
      depth = np.asarray(src[i]["depth"])
      assert not np.any(depth == np.float32(SENTINEL)), (split, i)


@pytest.fixture(scope="module")
def old_build(tmp_path_factory):
  """The dummy frames built at the toy config's 32 px as builder version OLD."""
  data_dir = str(tmp_path_factory.mktemp("old") / "tfds")
  with pytest.MonkeyPatch.context() as m:
    _build_old(m, data_dir, toy_config.DUMMY_DATA, toy_config.get_config().data.resolution)
  return data_dir


@pytest.fixture
def config(old_build, tmp_path, monkeypatch):
  """The toy config (real-HyperSim path: not synthetic) on a copy of the old build."""
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)
  config = toy_config.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  shutil.copytree(old_build, config.data.data_dir)
  return config


def _refused(load, config) -> str:
  before = runs.tree_snapshot(config.data.data_dir)
  with pytest.raises(errors.UserError) as e:
    load()
  message = str(e.value)
  assert "\n" not in message
  where = os.path.join(config.data.data_dir, "hypersim", "res32")
  assert f"{where} holds the data set built by builder version {OLD}, not {NEW}" in message
  assert runs.tree_snapshot(config.data.data_dir) == before  # nothing built, nothing deleted
  return message


@pytest.mark.parametrize("build", [True, False])
def test_user_build_of_an_old_version_is_refused(config, tmp_path, build):
  # Raw frames are there (the dummy data): without the check, build=True would start
  # a rebuild that the user did not ask for (hours on real HyperSim).
  message = _refused(lambda: datasets.load_data_sources(config.data, str(tmp_path / "run"),
                                                        build=build), config)
  want = shlex.join(["python", "-m", "tfds_hypersim.build",
                     "--manual_dir", os.path.abspath(toy_config.DUMMY_DATA),
                     "--data_dir", config.data.data_dir, "--resolution", "32"])
  assert f"`{want}`" in message, message


def _named_command(message: str, module: str) -> list[str]:
  """The command of `python -m module` that `message` names between backticks."""
  commands = [shlex.split(part) for part in message.split("`")[1::2]]
  named = [c for c in commands if c[:3] == ["python", "-m", module]]
  assert len(named) == 1, message
  return named[0]


def _shard_records(version_dir: str) -> dict[str, list[bytes]]:
  out = {}
  for name in sorted(os.listdir(version_dir)):
    if upgrade.SHARD_MARK in name:
      reader = array_record_module.ArrayRecordReader(os.path.join(version_dir, name))
      out[name] = (reader.writer_options_string(), reader.read_all())
      reader.close()
  return out


def test_the_named_upgrade_command_upgrades_without_raw_frames(config, tmp_path):
  config.data.manual_dir = str(tmp_path / "no_raw_frames")  # an upgrade needs none
  message = _refused(lambda: datasets.load_data_sources(config.data, "unused"), config)
  command = _named_command(message, "tfds_hypersim.upgrade")
  root = os.path.join(config.data.data_dir, "hypersim", "res32")
  os.makedirs(os.path.join(root, NEW + ".incomplete"))  # left by an interrupted upgrade
  old_files = runs.tree_snapshot(os.path.join(root, OLD))
  assert upgrade.main(command[3:]) == 0
  assert sorted(os.listdir(root)) == [OLD, NEW]
  assert runs.tree_snapshot(os.path.join(root, OLD)) == old_files  # left as it was
  old, new = _shard_records(os.path.join(root, OLD)), _shard_records(os.path.join(root, NEW))
  assert list(old) == list(new) and old
  for name, (old_options, old_records) in old.items():
    new_options, new_records = new[name]
    assert "zstd" in old_options and "uncompressed" in new_options, (old_options, new_options)
    assert new_records == old_records  # the same records, in the same order
  # This code reads the upgraded set, and it is the old build's (sentinel depth), not a
  # rebuild from raw frames.
  sources = datasets.load_data_sources(config.data, "unused", build=False)
  assert {k: len(v) for k, v in sources.items()} == {"train": 2, "validation": 1, "test": 1}
  for src in sources.values():
    for i in range(len(src)):
      assert np.all(np.asarray(src[i]["depth"]) == np.float32(SENTINEL))
  # Nothing left to upgrade: one line, exit status 1.
  assert upgrade.main(command[3:]) == 1


def test_training_and_evaluation_refuse_it(config, tmp_path):
  workdir = str(tmp_path / "run")
  _refused(lambda: trainer.load_data(config, workdir), config)
  _refused(lambda: report.load_split(config, workdir, "test"), config)
  assert not os.path.exists(workdir)


def test_the_named_command_rebuilds(config, tmp_path):
  message = _refused(lambda: datasets.load_data_sources(config.data, "unused"), config)
  command = _named_command(message, "tfds_hypersim.build")
  assert build_cli.main(command[3:]) == 0
  sources = datasets.load_data_sources(config.data, "unused", build=False)
  # The dummy data's splits after its two broken frames (tests/test_tfds_hypersim.py).
  assert {k: len(v) for k, v in sources.items()} == {"train": 2, "validation": 1, "test": 1}
  _assert_no_old_example(sources)
  root = os.path.join(config.data.data_dir, "hypersim", "res32")
  assert sorted(os.listdir(root)) == [OLD, NEW]  # the old build is left alone
  # "Not built" hints name only resolutions built by this version.
  config.data.resolution = 64
  config.data.manual_dir = str(tmp_path / "nothing")
  with pytest.raises(errors.UserError, match="holds the data set at resolution 32:"):
    datasets.load_data_sources(config.data, "unused")
  shutil.rmtree(os.path.join(root, NEW))
  with pytest.raises(errors.UserError) as e:
    datasets.load_data_sources(config.data, "unused")
  assert "holds the data set at resolution" not in str(e.value)


def test_procedural_demo_of_an_old_version_is_rebuilt(tmp_path, monkeypatch):
  config = toy_config.get_config()
  config.data.manual_dir = ""  # the demo's own folders inside the workdir
  config.data.synthetic.enabled = True
  config.data.synthetic.num_frames = dict(train=2, validation=1, test=1)
  workdir = str(tmp_path / "run")
  paths = datasets.resolve_paths(config.data, workdir)
  assert paths.data_dir.startswith(workdir)
  datasets.generate_synthetic(paths.manual_dir, config.data.synthetic)
  _build_old(monkeypatch, paths.data_dir, paths.manual_dir, config.data.resolution)
  # A process that may not build (a second host) reports it instead.
  with pytest.raises(errors.UserError, match=f"built by builder version {OLD}, not {NEW}"):
    datasets.load_data_sources(config.data, workdir, build=False)
  sources = datasets.load_data_sources(config.data, workdir)
  assert sum(len(src) for src in sources.values()) > 0
  _assert_no_old_example(sources)
  root = os.path.join(paths.data_dir, "hypersim", "res32")
  assert sorted(os.listdir(root)) == [OLD, NEW]


def test_train_command_prints_one_error_line(config, tmp_path):
  workdir = str(tmp_path / "run")
  rc, _, err = runs.finish(runs.start_training(
      workdir, f"--config.data.data_dir={config.data.data_dir}"), timeout=300)
  assert rc == 1, err[-2000:]
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and f"builder version {OLD}, not {NEW}" in last, last
  assert "python -m tfds_hypersim.build --manual_dir" in last
  assert not os.path.exists(workdir)


# Truncated: array_record fails to read it. Replaced by another whole shard (a copy
# gone wrong): it reads without an error, but holds other records.
@pytest.mark.parametrize("damage,why", [("truncated", "reading it failed"),
                                        ("replaced", "it holds 1 records, its dataset_info.json "
                                                    "says 2")])
def test_upgrade_of_a_damaged_shard_is_one_line_and_writes_nothing(config, capsys, damage,
                                                                   why):
  root = os.path.join(config.data.data_dir, "hypersim", "res32")
  shard, = glob.glob(os.path.join(root, OLD, "hypersim-train.array_record-*"))
  if damage == "truncated":
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2)
  else:
    other, = glob.glob(os.path.join(root, OLD, "hypersim-validation.array_record-*"))
    shutil.copyfile(other, shard)
  capsys.readouterr()
  assert upgrade.main(["--data_dir", config.data.data_dir]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  assert f"{shard} looks damaged" in err[0] and "python -m tfds_hypersim.build" in err[0]
  assert why in err[0]
  assert NEW not in os.listdir(root)  # no 3.1.0 that lacks records
