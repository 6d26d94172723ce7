"""The learning-rate schedule against the closed form of PyTorch's CosineAnnealingLR."""

import math

import numpy as np
import pytest
from ml_collections import config_dict

from configs import base, default
from smd_jax.training import steps


# float32 rates: a few float32 roundings of the largest rate (1e-3).
F32_ATOL = 4 * np.finfo(np.float32).eps * 1e-3


def cosine(base_lr: float, eta_min: float, t: float, t_max: float) -> float:
  """CosineAnnealingLR's closed form: eta_min + (base - eta_min) (1 + cos(pi t / T)) / 2."""
  return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def config_for(unit: str, num_epochs: int, warmup: int = 0):
  return config_dict.ConfigDict(dict(num_epochs=num_epochs, optimizer=dict(
      learning_rate=1e-3, end_learning_rate=1e-6, warmup_steps=warmup, schedule_unit=unit)))


def test_per_epoch_is_the_authors_staircase():
  # 3 epochs of 4 steps: the rate of epoch e holds for its 4 steps (the reference steps
  # its scheduler once per epoch, after the epoch's updates).
  schedule = steps.make_schedule(config_for("epoch", 3), total_steps=12)
  got = np.array([float(schedule(s)) for s in range(12)])
  want = np.array([cosine(1e-3, 1e-6, s // 4, 3) for s in range(12)])
  np.testing.assert_allclose(got, want, rtol=0, atol=F32_ATOL)
  assert got[0] == pytest.approx(1e-3) and got[3] == got[0] and got[4] < got[3]


def test_per_step_decays_every_step():
  schedule = steps.make_schedule(config_for("step", 3), total_steps=12)
  got = np.array([float(schedule(s)) for s in range(13)])
  want = np.array([cosine(1e-3, 1e-6, s, 12) for s in range(13)])
  np.testing.assert_allclose(got, want, rtol=0, atol=F32_ATOL)


def test_paper_rows_step_per_epoch_and_the_demo_per_step():
  assert base.get_config().optimizer.schedule_unit == "epoch"
  assert default.get_config().optimizer.schedule_unit == "step"
