"""python -m smd_jax.convert.workdir: converted weights -> a workdir that evaluate takes.

A toy 2-head model stands in for published weights (saved in the converted format);
the workdir must hold exactly those weights at checkpoint 0, and `evaluate` must run
on it without training and print the published row of the config's paper_row.
"""

import os

import numpy as np
import pytest

from smd_jax import paper
from smd_jax.convert import core, io, workdir as workdir_lib
from smd_jax.evaluation import report
from smd_jax.inference import trained_run
from smd_jax.models import registry
from smd_jax.training import steps as steps_lib
from tests.test_evaluate import tiny_config
from tests.toy_models import ToyEncoder


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)


def _flat(tree) -> dict:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return {p: np.asarray(v.get_value() if hasattr(v, "get_value") else v)
          for p, v in nnx.to_flat_state(tree)}


def test_converted_weights_become_an_evaluable_workdir(toy, tmp_path, capsys):
  config = tiny_config(str(tmp_path / "data"), paper_row="unet_2head")
  # "Published" weights: another seed than the config's, so weights left as initialised
  # would show.
  published = steps_lib.create_model(config, seed=config.seed + 7)
  arrays = {p: np.asarray(v.get_value()) for p, v in core.model_variables(published).items()}
  converted = str(tmp_path / "converted")
  io.save_converted(converted, arrays, {"arch": "toy", "scope": "model"})

  workdir = workdir_lib.write_workdir(converted, config, str(tmp_path / "published"))
  loaded = trained_run.load(workdir)
  assert loaded.step == workdir_lib.STEP
  got = {**_flat(loaded.state.params), **_flat(loaded.state.model_state)}
  assert set(got) == set(arrays)
  for path, value in arrays.items():
    np.testing.assert_array_equal(got[path], value, err_msg=str(path))

  result = report.evaluate_workdir(workdir, split="validation", num_images=0)
  row = paper.PUBLISHED["unet_2head"]
  assert "2-head" in result.table and f"{row.rmse:.3f}" in result.table, result.table
  assert np.isfinite(result.results["depth/rmse"])

  # A second conversion into the same workdir is refused; weights of another model too.
  with pytest.raises(workdir_lib.UserError, match="already has checkpoints"):
    workdir_lib.write_workdir(converted, config, workdir)
  other = tiny_config(str(tmp_path / "data"), semantic_head=False)
  with pytest.raises(workdir_lib.UserError, match="does not fit the config's model"):
    workdir_lib.write_workdir(converted, other, str(tmp_path / "other"))
  assert not os.path.exists(tmp_path / "other" / "config.json")
