"""Every paper row's config builds, trains a few steps and evaluates to finite metrics.

Each config runs as written (its tasks, losses, semantic transform, decoder and
input block) except for size, so all rows fit in the CPU test budget: the
decoder is narrow, the encoder rows of Table 2 use a tiny member of their
encoder's family, and every other row a toy 5-stage conv encoder (XLA:CPU takes
~35 s to compile even a tiny EfficientNet's train step; the encoders themselves
are tested against PyTorch in test_models.py / test_model_zoo.py). The UNet
decoder runs its plain upsample + convolution, as on GPUs and TPUs: the CPU's
sub-pixel form compiles ~2 s longer per decoder and is tested on its own
(test_conv_formulations.py; whole UNets against PyTorch in test_models.py).
"""

import functools
import glob
import os

import numpy as np
import pytest

from smd_jax import metrics, paper
from smd_jax.models import conv_formulations, efficientnet, registry, resnet
from smd_jax.training import data_parallel, steps as steps_lib, sweep
from tests.toy_models import ToyEncoder  # noqa: F401  (also imported from here by other tests)

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs", "paper")
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                      if not p.endswith("__init__.py"))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in CONFIG_FILES]
# Our own choices next to the rows (configs/paper/variants/).
VARIANT_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "variants", "*.py"))
                       if not p.endswith("__init__.py"))
VARIANT_NAMES = [os.path.splitext(os.path.basename(p))[0] for p in VARIANT_FILES]


# Table 2's encoder rows: the same encoder classes at toy width and depth.
TINY_ENCODERS = {
    "efficientnet_b2": functools.partial(efficientnet.EfficientNet, 0.25, 0.1),
    "efficientnet_b3": functools.partial(efficientnet.EfficientNet, 0.25, 0.1),
    "resnet50": functools.partial(resnet.ResNet, (1, 1, 1, 1)),
}
ENCODER_ROWS = ("unet_resnet50", "unet_effnet_b2", "unet_effnet_b3", "unet_effnet_b4")


def shrink(config, monkeypatch):
  if config.paper_row in ENCODER_ROWS:
    tiny = TINY_ENCODERS.get(config.model.encoder, TINY_ENCODERS["efficientnet_b2"])
  else:
    tiny = ToyEncoder
  monkeypatch.setitem(registry.ENCODERS, "tiny", tiny)
  monkeypatch.setattr(conv_formulations, "subpixel_upsample_conv", False)
  config.model.encoder = "tiny"
  with config.model.unlocked():
    config.model.decoder_channels = (16, 8, 8, 8, 8) if config.model.decoder == "unet" else 16
  config.data.resolution = 32
  return config


def batch_of(seed, size=32, n=4):
  rng = np.random.default_rng(seed)
  depth = rng.uniform(0.5, 14.0, (n, size, size)).astype(np.float32)
  depth[:, :, size // 2:] += 2.0  # a depth step, so the edge task has both classes
  depth[rng.random(depth.shape) < 0.1] = np.nan
  semantic = np.repeat(rng.integers(-1, 41, (n, size // 8, size // 8)), 8, axis=1)
  semantic = np.repeat(semantic, 8, axis=2).astype(np.int16)  # blocky labels: real contours
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "depth": depth, "semantic": semantic}


def test_every_published_row_has_a_config():
  assert set(NAMES) == set(paper.PUBLISHED)
  for path, name in zip(CONFIG_FILES, NAMES):
    assert sweep.load_config_file(path).paper_row == name


def test_every_variant_compares_with_a_published_row():
  assert VARIANT_NAMES
  for path in VARIANT_FILES:
    assert sweep.load_config_file(path).paper_row in paper.PUBLISHED, path


# What the authors' code builds per row (charyyev/semantic_md @3278e81; docs/results.md):
# encoder stem input channels (3 + their wrapper's k; sem. conv.: 3 + its 3 outputs),
# the input block's input channels, and per head (outputs, activation, kernel,
# upsampling). Single-task smp models: sigmoid depth, UNet 3x3 / DeepLabV3 1x1 x8;
# multi-task models: every head 3x3 without activation (DeepLabV3: x8).
SMP_UNET = {"depth": (1, "sigmoid", 3, 1)}
SMP_DEEPLAB = {"depth": (1, "sigmoid", 1, 8)}
MULTI = {"depth": (1, "identity", 3, 1), "semantic": (40, "identity", 3, 1)}
AUTHORS = {
    "unet_l1": (3, None, SMP_UNET), "unet_berhu": (3, None, SMP_UNET),
    "unet_concat": (4, None, SMP_UNET), "unet_1hot40": (43, None, SMP_UNET),
    "unet_1hot20": (23, None, SMP_UNET), "unet_1hot3": (6, None, SMP_UNET),
    "unet_contour": (4, None, SMP_UNET), "unet_semconv": (6, 1, SMP_UNET),
    "unet_2head": (3, None, MULTI),
    "unet_3head": (3, None, {**MULTI, "contours": (2, "identity", 3, 1)}),
    "unet_resnet50": (3, None, SMP_UNET), "unet_effnet_b2": (3, None, SMP_UNET),
    "unet_effnet_b3": (3, None, SMP_UNET), "unet_effnet_b4": (3, None, SMP_UNET),
    "unet_2head_dice": (3, None, MULTI), "unet_2head_dice_ce": (3, None, MULTI),
    "unet_2head_ftl_ce": (3, None, MULTI),
    "unet_2head_sobel": (3, None, {"depth": (1, "identity", 3, 1),
                                   "depth_edges": (2, "identity", 3, 1)}),
    "deeplab_l1": (3, None, SMP_DEEPLAB), "deeplab_1hot40": (43, None, SMP_DEEPLAB),
    "deeplab_2head_ce": (3, None, {t: (n, "identity", 3, 8) for t, (n, *_) in MULTI.items()}),
    "deeplab_2head_dice_ce": (3, None, {t: (n, "identity", 3, 8)
                                        for t, (n, *_) in MULTI.items()}),
}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=NAMES)
def test_row_builds_the_authors_model(path, monkeypatch):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = sweep.load_config_file(path)
  stem_in, block_in, heads = AUTHORS[config.paper_row]
  # The encoder's family at toy size (stem widths do not depend on it); shapes only.
  tiny = TINY_ENCODERS.get(config.model.encoder, TINY_ENCODERS["efficientnet_b2"])
  monkeypatch.setitem(registry.ENCODERS, "tiny", tiny)
  config.model.encoder = "tiny"
  model = nnx.eval_shape(lambda: steps_lib.create_model(config, seed=0))
  stem = getattr(model.encoder, "conv_stem", None) or model.encoder.conv1
  assert stem.kernel.get_value().shape[2] == stem_in
  assert (model.input_block.in_channels if model.input_block else None) == block_in
  got = {t: (h.conv.kernel.get_value().shape[-1], h.activation,
             h.conv.kernel.get_value().shape[0], h.upsampling) for t, h in model.heads.items()}
  assert got == heads
  # New stem input channels get PyTorch's default init, as their wrappers give them.
  assert config.model.stem_init == ("torch_uniform" if stem_in > 3 else "encoder")
  # Multi-task decoders and heads keep PyTorch's default init (no smp initialize()).
  assert config.model.branch_init == ("torch" if len(heads) > 1 else "smp")


@pytest.mark.parametrize("path", CONFIG_FILES + VARIANT_FILES, ids=NAMES + VARIANT_NAMES)
def test_config_trains_and_evaluates(path, monkeypatch):
  config = shrink(sweep.load_config_file(path), monkeypatch)
  mesh = data_parallel.make_mesh(2)
  model = steps_lib.create_model(config, seed=0)
  steps, state = steps_lib.build_steps(config, model, total_steps=4, mesh=mesh)
  for seed in range(2):
    state, out = steps.train_step(state, data_parallel.to_global(batch_of(seed), mesh))
    out = data_parallel.fetch(out)
    assert np.isfinite(out["loss"]), (seed, out["loss"])
    for name in config.tasks:
      assert np.isfinite(out[f"loss_{name}"]), name
    # L = L_depth + sum_i lambda_i L_i with the config's weights.
    weighted = sum(config.tasks[n].weight * out[f"loss_{n}"] for n in config.tasks)
    np.testing.assert_allclose(out["loss"], weighted, rtol=1e-5)
  assert int(data_parallel.fetch(state.step)) == 2

  batch = batch_of(7)
  batch["mask"] = np.array([True, True, True, False])  # a padded evaluation batch
  sums = steps.eval_step(state, data_parallel.to_global(batch, mesh))
  for name, task in steps.tasks.items():
    values = task.finalize(metrics.accumulate(None, sums[name]))
    # Precision is 0/0 when no pixel is predicted positive, which the authors'
    # multi-task init (PyTorch default, small features: the head's bias decides) often
    # gives after two steps; recall is then 0 (a finite check of its own).
    finite = lambda k, v: np.isfinite(v) or (k == "precision" and values.get("recall") == 0.0)
    assert values and all(finite(k, v) for k, v in values.items()), (name, values)
  assert set(steps.tasks) == set(config.tasks)
  # The padded row counts for nothing: other content there leaves every sum as it is
  # (each example's forward pass is its own in eval mode; masked terms add exact zeros).
  other = {k: v.copy() for k, v in batch.items()}
  other["image"][3] = 255 - other["image"][3]
  other["depth"][3] = np.flip(other["depth"][3]) + 1.0
  other["semantic"][3] = np.where(other["semantic"][3] > 0, 41 - other["semantic"][3], 7)
  other_sums = steps.eval_step(state, data_parallel.to_global(other, mesh))
  for name in steps.tasks:
    for k in sums[name]:
      np.testing.assert_allclose(np.asarray(other_sums[name][k]), np.asarray(sums[name][k]),
                                 rtol=1e-6, err_msg=f"{name}/{k}")
  # Depth: NumPy's formula over the valid pixels of the three real examples, on the
  # predictions of the same state (gt clamped to 15 m; float32 sums of ~3e3 pixels).
  pred = data_parallel.fetch(steps.predict_step(state, data_parallel.to_global(batch, mesh)))[:3]
  gt = np.asarray(batch["depth"][:3], np.float64)
  valid = np.isfinite(gt) & (gt > 0)
  gt = np.clip(gt, 0, 15.0)
  assert float(sums["depth"]["count"]) == valid.sum()
  depth = metrics.finalize_depth_metrics(metrics.accumulate(None, sums["depth"]))
  want = np.sqrt(np.mean((np.maximum(pred[valid], 1e-3) - gt[valid]) ** 2))
  assert depth["rmse"] == pytest.approx(want, rel=2e-5)
