"""Every model class of the authors' code converts (``--from semantic_md``), computes what
the PyTorch model computes, and loads into the model of its configs/paper row.

The PyTorch side (`tests/semantic_md_reference.py`) rebuilds each class with its
attribute names from smp 0.3.3 / torchvision parts, random weights and calibrated random
BatchNorm statistics, at a tiny encoder width and 64x64 inputs so the tests stay fast.
Its inputs are encoded here in NumPy as the authors' dataset does (normalised RGB, then
clip(label, 0) / 40, one-hot k in prevalence order with zero vectors, contours, or the
raw label map), ours by `smd_jax.semantics` under the row's transform: the comparison
covers the input encodings too. Eval mode, every head, raw outputs, <= 1e-4.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from flax import nnx

from smd_jax import semantics
from smd_jax.convert import converters, core, fidelity, io
from smd_jax.models import efficientnet, registry
from smd_jax.training import steps as steps_lib, sweep
from tests import semantic_md_reference as ref_lib
from tests import torch_reference

TOLERANCE = 1e-4
SHAPE = (2, 64, 64)
CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs", "paper")
PREVALENCE = [1, 2, 22, 9, 38, 5, 3, 40, 7, 6, 13, 8, 35, 20, 4, 14, 39, 18, 11, 12, 10, 23,
              19, 36, 15, 25, 34, 17, 24, 21, 32, 16, 27, 29, 26, 33, 30, 31, 37, 28]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def np_contours(sem):
  """dilate(3x3) - erode(3x3) > 0 with windows clipped to the image (OpenCV's border)."""
  out = np.zeros(sem.shape, np.float32)
  for n, i, j in np.ndindex(sem.shape):
    window = sem[n, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
    out[n, i, j] = window.max() != window.min()
  return out[..., None]


# The authors' input encodings (hypersim_dataset.py, conversions.py), label map [B,H,W].
AUTHORS_INPUTS = {
    "none": lambda sem: np.zeros(sem.shape + (0,), np.float32),
    "concat": lambda sem: (np.maximum(sem, 0) / 40.0)[..., None],
    "onehot40": lambda sem: np.stack([sem == c for c in PREVALENCE[:40]], -1),
    "onehot20": lambda sem: np.stack([sem == c for c in PREVALENCE[:20]], -1),
    "onehot3": lambda sem: np.stack([sem == c for c in PREVALENCE[:3]], -1),
    "contours": np_contours,
    "labels_raw": lambda sem: sem[..., None],
}

# (reference class, extra stem channels, configs/paper row or None, their input)
CASES = {
    "unet_l1": ("smp_unet", 0, "unet_l1", "none"),
    "deeplab_l1": ("smp_deeplab", 0, "deeplab_l1", "none"),
    "unet_concat": ("input_unet", 1, "unet_concat", "concat"),
    "unet_1hot40": ("input_unet", 40, "unet_1hot40", "onehot40"),
    "unet_1hot20": ("input_unet", 20, "unet_1hot20", "onehot20"),
    "unet_1hot3": ("input_unet", 3, "unet_1hot3", "onehot3"),
    "unet_contour": ("input_unet", 1, "unet_contour", "contours"),
    "deeplab_1hot40": ("input_deeplab", 40, "deeplab_1hot40", "onehot40"),
    "unet_semconv": ("semantic_convolution", 0, "unet_semconv", "labels_raw"),
    "unet_2head": ("multi_loss_unet", 0, "unet_2head", "none"),
    "deeplab_2head_ce": ("multi_loss_deeplab", 0, "deeplab_2head_ce", "none"),
    "unet_3head": ("triple_loss", 0, "unet_3head", "none"),
    "unet_2head_sobel": ("sobel_loss", 0, "unet_2head_sobel", "none"),
    "contour_loss": ("contour_loss", 0, None, "none"),  # no paper row (docs/results.md)
}
# How the state dict is saved: plain, {'state_dict': ...}, {'model': {'module.' + k}}.
WRAPPERS = (lambda sd: sd, lambda sd: {"state_dict": sd},
            lambda sd: {"model": {"module." + k: v for k, v in sd.items()}})


@pytest.fixture
def tiny(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, ref_lib.TINY_OURS,
                      functools.partial(efficientnet.EfficientNet, 0.25, 0.1))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  b, h, w = SHAPE
  sem = np.repeat(np.repeat(rng.integers(-1, 41, (b, h // 4, w // 4)), 4, 1), 4, 2)
  return {"image": rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8),
          "semantic": sem.astype(np.int16)}


def _torch_inputs(batch, encoding):
  image = (batch["image"] / 255.0 - MEAN) / STD
  extra = AUTHORS_INPUTS[encoding](batch["semantic"].astype(np.float32))
  return np.concatenate([image, extra.astype(np.float64)], -1).astype(np.float32)


@nnx.jit
def _forward(model, x):
  return model(x)


def _row_model(row, model_config):
  config = sweep.load_config_file(os.path.join(CONFIG_DIR, f"{row}.py"))
  config.model.encoder = ref_lib.TINY_OURS
  with config.model.unlocked():
    config.model.decoder_channels = model_config["decoder_channels"]
  return config, steps_lib.create_model(config, seed=1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_class_converts_and_loads_into_its_row(case, tiny, tmp_path):
  torch, timm, smp = torch_reference.import_reference()
  kind, extra, row, encoding = CASES[case]
  torch.manual_seed(0)
  reference = ref_lib.build(torch, smp, kind, ref_lib.make_tiny_timm_encoder(timm), extra=extra)
  batch = _batch()
  x_torch = _torch_inputs(batch, encoding)
  fidelity.calibrate_batch_norm(torch, reference, lambda m, x: m(x), x_torch)
  reference.eval()
  with torch.no_grad():
    want = {t: o.numpy().transpose(0, 2, 3, 1)
            for t, o in reference(torch.from_numpy(x_torch.transpose(0, 3, 1, 2).copy())).items()}

  # Through a .pth file, wrapped as a training script might save it.
  state_dict = {k: v.detach().clone() for k, v in reference.state_dict().items()}
  weights = str(tmp_path / "weights.pth")
  torch.save(WRAPPERS[sorted(CASES).index(case) % len(WRAPPERS)](state_dict), weights)
  model, report, model_config = converters.convert_model(io.read_state_dict(weights),
                                                         source="semantic_md")
  # The unused `test` module and the duplicate `pretrained_model` are all that is ignored.
  assert {n.split(".")[0] for n in report.ignored} <= {"test", "pretrained_model"}
  reference_params = sum(p.numel() for n, p in reference.named_parameters()
                         if not n.startswith("test."))
  assert fidelity._num_params(model) == reference_params  # pylint: disable=protected-access

  transform = encoding if row is not None else "none"
  x = np.asarray(semantics.model_inputs(batch, transform))
  model.eval()
  got = {t: np.asarray(o) for t, o in _forward(model, x).items()}
  assert set(got) == set(want)
  diffs = {t: float(np.max(np.abs(got[t] - want[t]))) for t in want}
  print(f"{case}: params {reference_params}, max |diff| per head {diffs}")
  assert max(diffs.values()) <= TOLERANCE, diffs

  if row is None:
    return
  config, row_model = _row_model(row, model_config)
  arrays = converters.arrays_of(model, report.loaded)
  core.assign(row_model, core.Converted(arrays, {p: core.dotted(p) for p in arrays}))
  row_model.eval()
  row_out = _forward(row_model, x)
  for task, value in got.items():
    np.testing.assert_allclose(np.asarray(row_out[task]), value, rtol=0, atol=1e-6,
                               err_msg=f"{row}: {task}")
  assert set(config.tasks) == set(want)
