"""Numerical fidelity of weight import (smd_jax.convert) against the PyTorch originals.

Builds the PyTorch references (timm 0.9.2, smp 0.3.3) with random weights and
calibrated random BatchNorm statistics (`fidelity.calibrate_batch_norm`), converts them
and compares every feature map, every output and, after one train-mode pass, every
running statistic; skips with the reason where torch is absent. Inputs are kept small
(eval 2x64x96, train 2x64x64; ``benchmarks/fidelity.py`` runs both shapes in eval mode
for docs/fidelity.md). A file of its own (from tests/test_convert.py): these full-size
models are the slowest tests, and parallel workers take whole files.
"""

from __future__ import annotations

import numpy as np
import pytest

from smd_jax.convert import fidelity
from tests import torch_reference
from tests.test_convert import TOLERANCE

EVAL_SHAPES = ((2, 64, 96),)
TRAIN_SHAPE = (2, 64, 64)


# Train-mode bound, in float32 ulps of the largest value: BatchNorm over a 2x64x64 batch
# divides nearly constant channels by ~sqrt(eps), which amplifies rounding ~100-fold
# (calibrate_batch_norm). Measured distances from the float64 result: 1.5e-4 (2-head
# b2, scale 3.9) on one machine, up to ~3e-4 on another; 2^12 ulps of 3.9 = 1.9e-3
# leaves a margin of 6 over both, while a wrong activation or normalisation is off by
# O(1) of the scale.
TRAIN_ULPS = 2.0**12


def _assert_fidelity(result):
  """Parameter counts equal. Eval mode: every feature map and output within 1e-4 of
  PyTorch. Train mode (batch statistics): within `TRAIN_ULPS` float32 ulps of the
  largest value of the exact result (PyTorch in float64 on the same input), a bound
  from the dtype and the magnitude only. Running statistics after the pass: within
  1e-4 (relative above 1), which a wrong BatchNorm momentum breaks."""
  print(result)
  assert result.params == result.reference_params
  assert result.eval_features <= TOLERANCE, result
  assert result.eval_outputs <= TOLERANCE, result
  scale = max(1.0, result.feature_scale, result.output_scale)
  train_bound = max(TOLERANCE, TRAIN_ULPS * float(np.finfo(np.float32).eps) * scale)
  assert result.exact_train_error <= train_bound, (train_bound, result)
  assert result.train_stats <= TOLERANCE, result


@pytest.mark.parametrize("arch", ["efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
                                  "resnet50"])
def test_imagenet_encoder_matches_timm(arch, tmp_path):
  torch_reference.import_reference()
  # Through a .safetensors file written by torch and read back without it.
  result = fidelity.encoder_fidelity(arch, shapes=EVAL_SHAPES, train_shape=TRAIN_SHAPE,
                                     weights_file=str(tmp_path / f"{arch}.safetensors"))
  _assert_fidelity(result)


@pytest.mark.parametrize("decoder", ["unet", "deeplabv3"])
def test_smp_model_matches_smp(decoder):
  torch_reference.import_reference()
  _assert_fidelity(fidelity.smp_fidelity("efficientnet_b4", decoder, shapes=EVAL_SHAPES,
                                         train_shape=TRAIN_SHAPE))


def test_two_head_semantic_md_model_matches():
  torch_reference.import_reference()
  _assert_fidelity(fidelity.semantic_md_fidelity("efficientnet_b2", shapes=EVAL_SHAPES,
                                                 train_shape=TRAIN_SHAPE))
