"""benchmarks/accelerator_check.py on the CPU backend at toy sizes, so that the
one-shot GPU/TPU check cannot rot: every check runs (the mesh check over the 8
simulated devices), the benchmark writes its row, and the reports are complete."""

from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest

from benchmarks import accelerator_check, flax_side
from smd_jax.models import registry
from tests.toy_models import ToyEncoder


@pytest.fixture
def toy_paper_config(monkeypatch):
  """The benchmark's paper config with the toy encoder and a narrow decoder."""
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)
  make_config = flax_side.make_config

  def small(model, **kwargs):
    config = make_config(model, **kwargs)
    with config.model.unlocked():
      config.model.decoder_channels = (16, 8, 8, 8, 8)
    return config

  monkeypatch.setattr(flax_side, "make_config", small)


def test_runs_every_check_and_the_benchmark_on_the_cpu(tmp_path, toy_paper_config):
  del toy_paper_config
  rc = accelerator_check.main(["--encoder", "toy", "--check-size", "32", "--check-batch", "8",
                               "--batch-size", "8", "--size", "32", "--repeats", "1",
                               "--sides", "flax", "--out", str(tmp_path), "--name", "check"])
  result = json.loads((tmp_path / "check.json").read_text())
  checks = {c["name"]: c for c in result["checks"]}
  assert rc == 0, result["checks"]
  assert result["device"]["backend"] == "cpu"
  assert result["device"]["local_device_count"] == 8  # tests/conftest.py
  assert result["device"]["versions"]["jax"]
  assert list(checks) == ["outputs_match_cpu", "f32_step", "bf16_step", "no_recompile",
                          "mesh_all_devices"]
  assert {c["status"] for c in checks.values()} == {"pass"}, checks
  assert checks["outputs_match_cpu"]["relative_error"] <= accelerator_check.F32_TOL
  assert checks["no_recompile"]["lowerings"] == []
  # Same weights and batch: the bf16 loss is a rounding of the float32 one, not equal.
  f32, bf16 = checks["f32_step"]["loss"], checks["bf16_step"]["loss"]
  assert f32 != bf16 and abs(bf16 - f32) <= 0.02 * f32
  (row,) = result["benchmark"]["rows"]
  assert (row["side"], row["precision"], row["batch_size"], row["size"]) == ("flax", "bf16",
                                                                              8, 32)
  assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
  assert result["benchmark"]["errors"] == []
  report = (tmp_path / "check.md").read_text()
  assert "| mesh_all_devices | pass |" in report
  assert "| unet | bf16 | 8 | 32 |" in report


def test_float32_checks_run_at_the_highest_precision_and_the_bf16_ones_at_the_default(
    monkeypatch):
  # The bf16 step is the benchmark's program (at its shape), not a float32-precise one.
  seen = {}

  def note(name):
    def check(self, *args):
      del self, args
      seen[name] = jax.config.jax_default_matmul_precision
      return {"status": "pass"}
    return check

  for name in ("f32_checks", "bf16_step", "no_recompile", "mesh_all_devices"):
    monkeypatch.setattr(accelerator_check._Checks, name, note(name))  # pylint: disable=protected-access
  args = types.SimpleNamespace(check_batch=8)
  accelerator_check._Checks(args, log=lambda _: None).run()  # pylint: disable=protected-access
  assert seen == {"f32_checks": "highest", "bf16_step": None, "no_recompile": None,
                  "mesh_all_devices": "highest"}


def test_relative_error_against_hand_computed_cases():
  # max |diff| / max(1, max |reference|), over all leaves.
  assert accelerator_check.relative_error({"a": np.array([1.0, 2.0])},
                                          {"a": np.array([1.0, 2.5])}) == pytest.approx(0.2)
  assert accelerator_check.relative_error([np.array([0.1]), np.array([3.0])],
                                          [np.array([0.2]), np.array([3.0])]
                                          ) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="shapes differ"):
    accelerator_check.relative_error([np.zeros(2)], [np.zeros(3)])


def _fake_torch(cuda: bool):
  return lambda: types.SimpleNamespace(__version__="0.0", cuda=types.SimpleNamespace(
      is_available=lambda: cuda))


def _missing_torch():
  raise ImportError("No module named 'torch'")


@pytest.mark.parametrize("backend, torch, runs, reason", [
    ("gpu", _fake_torch(cuda=True), True, None),
    ("gpu", _fake_torch(cuda=False), False, "has no CUDA device"),
    ("cpu", _fake_torch(cuda=False), True, None),
    ("cpu", _fake_torch(cuda=True), False, "would run on CUDA"),
    ("tpu", _fake_torch(cuda=False), False, "no PyTorch side on the tpu backend"),
    ("gpu", _missing_torch, False, "install_torch_reference.sh"),
])
def test_torch_side_runs_only_on_the_device_jax_uses(backend, torch, runs, reason):
  include, why = accelerator_check.torch_plan(backend, torch)
  assert include is runs
  assert (why is None) if reason is None else (reason in why)
