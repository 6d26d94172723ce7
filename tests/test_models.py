"""Tests for smd_jax.models against the PyTorch reference architectures.

Reference numbers below come from timm 0.9.2 + segmentation-models-pytorch 0.3.3 (CPU
torch 2.13): ``timm.create_model(name, features_only=True)`` for the encoders and
``smp.Unet('tu-' + name, classes=1)`` for the full models. Counts and shapes are checked
abstractly (``nnx.eval_shape`` / ``jax.eval_shape``: no compile); only the b4 forward
passes, the depthwise-conv and drop-path checks run real XLA programs, at tiny sizes.
``test_matches_pytorch_reference`` runs where torch, timm and smp are installed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from smd_jax.models import DenseModel, build_model, conv_formulations, layers, registry
from smd_jax.models.efficientnet import InvertedResidual
from tests import torch_copy, torch_reference

# name -> (encoder params, UNet + 1-output head params, feature channels, blocks/stage)
REFERENCE = {
    "efficientnet_b2": (7_202_562, 9_543_251, (16, 24, 48, 120, 352), (2, 3, 3, 4, 4, 5, 2)),
    "efficientnet_b3": (10_103_336, 12_561_529, (24, 32, 48, 136, 384), (2, 3, 3, 5, 5, 6, 2)),
    "efficientnet_b4": (16_742_216, 19_412_377, (24, 32, 56, 160, 448), (2, 4, 4, 6, 6, 8, 2)),
}
# smp.Unet('tu-' + name, classes=1, in_channels=4).
UNET_IN4_PARAMS = {"efficientnet_b2": 9_543_539, "efficientnet_b4": 19_412_809}

DEPTH_HEAD = {"depth": {"num_outputs": 1, "activation": "sigmoid"}}


def _config(encoder="efficientnet_b4", heads=None, **overrides):
  fields = dict(encoder=encoder, decoder="unet", in_channels=3, dtype="float32",
                heads=heads or DEPTH_HEAD)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@functools.cache
def _abstract_model(encoder, in_channels=3):
  return nnx.eval_shape(
      lambda: build_model(_config(encoder, in_channels=in_channels), rngs=nnx.Rngs(0)))


def _num_params(module):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _normal(shape, seed=0):
  # Host RNG: jax.random would compile a program per shape (slow on a small CPU).
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _apply_shapes(module, fn, x_shape, dtype=jnp.float32):
  """Shapes/dtypes of fn(module, x) without running it."""
  graphdef, state = nnx.split(module)
  return jax.eval_shape(lambda s, x: fn(nnx.merge(graphdef, s, copy=True), x), state,
                        jax.ShapeDtypeStruct(x_shape, dtype))


# ---------------------------------------------------------------- architecture vs timm/smp


@pytest.mark.parametrize("encoder", sorted(REFERENCE))
def test_param_counts_match_pytorch_reference(encoder):
  encoder_params, unet_params, _, _ = REFERENCE[encoder]
  model = _abstract_model(encoder)
  assert _num_params(model.encoder) == encoder_params
  assert _num_params(model) == unet_params  # trainable only: BN running stats excluded


def test_b4_unet_param_count_is_the_papers_model():
  assert _num_params(_abstract_model("efficientnet_b4")) == 19_412_377


def test_in_channels_widens_only_the_stem():
  model = _abstract_model("efficientnet_b2", in_channels=4)
  assert model.encoder.conv_stem.kernel.shape == (3, 3, 4, 32)
  assert _num_params(model) == UNET_IN4_PARAMS["efficientnet_b2"]


@pytest.mark.parametrize("encoder", sorted(REFERENCE))
def test_encoder_layout_mirrors_timm(encoder):
  _, _, channels, blocks = REFERENCE[encoder]
  enc = _abstract_model(encoder).encoder
  assert enc.out_channels == channels
  assert enc.reductions == (2, 4, 8, 16, 32)
  assert tuple(len(stage) for stage in enc.blocks) == blocks
  # timm names: DS block first, then MBConv blocks; SE on every block.
  ds, ir = enc.blocks[0][0], enc.blocks[1][0]
  for name in ("conv_dw", "bn1", "se", "conv_pw", "bn2"):
    assert hasattr(ds, name)
  for name in ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3"):
    assert hasattr(ir, name)
  assert hasattr(ir.se, "conv_reduce") and hasattr(ir.se, "conv_expand")
  assert not hasattr(enc, "conv_head")  # features_only drops the head


def test_b4_stage_table_numbers():
  enc = _abstract_model("efficientnet_b4").encoder
  assert enc.conv_stem.kernel.shape == (3, 3, 3, 48)
  widths = [stage[0].bn2.scale.shape[0] if i == 0 else stage[0].bn3.scale.shape[0]
            for i, stage in enumerate(enc.blocks)]
  assert widths == [24, 32, 56, 112, 160, 272, 448]
  kernels = [stage[0].conv_dw.kernel.shape[0] for stage in enc.blocks]
  assert kernels == [3, 3, 5, 3, 5, 5, 3]
  strides = [stage[0].conv_dw.strides for stage in enc.blocks]
  assert [s[0] for s in strides] == [1, 2, 2, 2, 1, 2, 1]
  first_ir = enc.blocks[1][0]  # 24 -> 144 (x6) -> SE 6 (0.25 of the 24 input chs)
  assert first_ir.conv_pw.kernel.shape == (1, 1, 24, 144)
  assert first_ir.conv_dw.kernel.shape == (3, 3, 1, 144)  # depthwise: groups = 144
  assert first_ir.se.conv_reduce.kernel.shape == (1, 1, 144, 6)
  assert enc.blocks[0][0].se.conv_reduce.kernel.shape == (1, 1, 48, 12)
  # PyTorch-symmetric padding, also for stride 2 (not TF 'SAME').
  assert enc.conv_stem.padding == ((1, 1), (1, 1))
  assert enc.blocks[2][0].conv_dw.padding == ((2, 2), (2, 2))


@pytest.mark.parametrize("encoder,height,width", [
    ("efficientnet_b4", 64, 64),
    ("efficientnet_b4", 64, 96),
    ("efficientnet_b2", 64, 96),
    ("efficientnet_b3", 96, 64),
])
def test_feature_shapes(encoder, height, width):
  model = _abstract_model(encoder)
  features = _apply_shapes(model, lambda m, x: m.encoder(x), (2, height, width, 3))
  assert [f.shape for f in features] == [
      (2, height // r, width // r, c)
      for r, c in zip((2, 4, 8, 16, 32), REFERENCE[encoder][2])]
  out = _apply_shapes(model, lambda m, x: m(x), (2, height, width, 3))
  assert out["depth"].shape == (2, height, width, 1)
  assert out["depth"].dtype == jnp.float32


def test_unet_decoder_channels():
  decoder = _abstract_model("efficientnet_b4").decoders["depth"]
  # smp: in = [448, 256, 128, 64, 32], skip = [160, 56, 32, 24, 0].
  conv1_in = [block.conv1.conv.kernel.shape[2] for block in decoder.blocks]
  assert conv1_in == [448 + 160, 256 + 56, 128 + 32, 64 + 24, 32]
  assert [block.conv2.conv.kernel.shape[3] for block in decoder.blocks] == [
      256, 128, 64, 32, 16]
  assert decoder.out_channels == 16


# ------------------------------------------------------------------- config and registry


def test_multitask_bf16_model_structure():
  heads = {"depth": {"num_outputs": 1, "activation": "sigmoid"},
           "semantic": {"num_outputs": 40, "activation": "identity"},
           "contour": {"num_outputs": 2}}
  model = nnx.eval_shape(lambda: build_model(
      _config("efficientnet_b2", heads=heads, in_channels=43, dtype="bfloat16"),
      rngs=nnx.Rngs(0)))
  assert isinstance(model, DenseModel)
  assert set(model.decoders) == set(model.heads) == set(heads)
  assert model.heads["contour"].activation == "identity"
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}  # f32 master params
  # One shared encoder (stem widened by 40 inputs), one decoder and head per task.
  encoder, unet_total = REFERENCE["efficientnet_b2"][:2]
  head_per_output = 16 * 9 + 1  # conv3x3 16 -> 1 with bias
  decoder = unet_total - encoder - head_per_output
  assert _num_params(model) == (encoder + 40 * 9 * 32 + 3 * decoder
                                + (1 + 40 + 2) * head_per_output)
  features = _apply_shapes(model, lambda m, x: m.encoder(x), (2, 64, 64, 43))
  assert all(f.dtype == jnp.bfloat16 for f in features)  # compute in bf16
  out = _apply_shapes(model, lambda m, x: m(x), (2, 64, 64, 43))
  assert {k: v.shape for k, v in out.items()} == {
      "depth": (2, 64, 64, 1), "semantic": (2, 64, 64, 40), "contour": (2, 64, 64, 2)}
  assert all(v.dtype == jnp.float32 for v in out.values())  # outputs f32


@pytest.mark.parametrize("field,value,known", [
    ("encoder", "resnet18", "efficientnet_b4"),
    ("decoder", "fpn", "unet"),
])
def test_unknown_names_raise_with_known_names(field, value, known):
  with pytest.raises(ValueError, match=known):
    build_model(_config(**{field: value}), rngs=nnx.Rngs(0))


def test_unknown_activation_raises():
  with pytest.raises(ValueError, match="sigmoid"):
    build_model(_config("efficientnet_b2", heads={"depth": {"num_outputs": 1,
                                                            "activation": "softsign"}}),
                rngs=nnx.Rngs(0))


def test_registries():
  assert {"efficientnet_b2", "efficientnet_b3", "efficientnet_b4"} <= set(registry.ENCODERS)
  assert "unet" in registry.DECODERS
  assert {"sigmoid", "identity"} <= set(registry.ACTIVATIONS)
  x = jnp.array([-30.0, 0.0, 30.0])
  np.testing.assert_allclose(registry.ACTIVATIONS["sigmoid"](x), [0.0, 0.5, 1.0], atol=1e-6)


# ----------------------------------------------------------------------- real execution


@pytest.fixture(scope="module")
def b2_model():
  # The smallest registered encoder keeps the CPU compiles short.
  return build_model(_config("efficientnet_b2"), rngs=nnx.Rngs(0))


def _run(model, x):
  """Jitted forward on a split model; returns outputs and the updated state."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    return m(x), nnx.state(m)

  return forward(state, x)


def test_train_and_eval_modes(b2_model):
  x = _normal((2, 32, 32, 3))
  b2_model.train()
  train_graphdef, train_state = nnx.split(b2_model)
  y_train, state_after_train = _run(b2_model, x)
  b2_model.eval()
  eval_graphdef, eval_state = nnx.split(b2_model)
  y_eval, state_after_eval = _run(b2_model, x)
  b2_model.train()

  # Output contract: [B, H, W, 1] float32 at input resolution, sigmoid range.
  for y in (y_train["depth"], y_eval["depth"]):
    assert y.shape == (2, 32, 32, 1) and y.dtype == jnp.float32
    y = np.asarray(y)
    assert np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))
  # BN batch statistics (train) vs running statistics (eval) give different outputs.
  assert np.max(np.abs(np.asarray(y_train["depth"]) - np.asarray(y_eval["depth"]))) > 1e-4

  # One split per mode: graphdefs differ, state structures are interchangeable.
  assert train_graphdef != eval_graphdef
  assert jax.tree.structure(train_state) == jax.tree.structure(eval_state)

  # (numpy comparisons: an eager jnp op per distinct shape would compile ~100 programs)
  before = [np.asarray(a) for a in jax.tree.leaves(nnx.state(b2_model, nnx.BatchStat))]
  after_train = jax.tree.leaves(nnx.filter_state(state_after_train, nnx.BatchStat))
  after_eval = jax.tree.leaves(nnx.filter_state(state_after_eval, nnx.BatchStat))
  # b2 UNet: stem 1 + 2 DS x 2 + 21 MBConv x 3 + decoder 10 = 78 BN layers.
  assert len(before) == len(after_train) == len(after_eval) == 2 * 78
  # train mode updates every running statistic, eval mode leaves them untouched
  assert all(np.any(a != np.asarray(b)) for a, b in zip(before, after_train))
  assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after_eval))


def test_input_size_must_be_multiple_of_32(b2_model):
  with pytest.raises(ValueError, match="multiples of 32"):
    b2_model(jnp.zeros((1, 48, 48, 3)))


def test_initialization_follows_timm_and_smp(b2_model):
  # timm goog init: N(0, 2 / fan_out), fan_out = k*k*out/groups (depthwise: k*k).
  dw = b2_model.encoder.blocks[5][1].conv_dw.kernel[...]  # 5x5 depthwise, 1248 chs
  np.testing.assert_allclose(float(jnp.std(dw)), np.sqrt(2 / 25), rtol=0.05)
  pw = b2_model.encoder.blocks[5][1].conv_pw.kernel[...]  # 1x1, 208 -> 1248
  np.testing.assert_allclose(float(jnp.std(pw)), np.sqrt(2 / 1248), rtol=0.05)
  # smp decoder: kaiming_uniform(fan_in, relu) -> U(-sqrt(6 / fan_in), +).
  conv = b2_model.decoders["depth"].blocks[0].conv1.conv.kernel[...]
  bound = np.sqrt(6 / (9 * (352 + 120)))
  assert float(jnp.max(jnp.abs(conv))) <= bound
  assert float(jnp.max(jnp.abs(conv))) > 0.99 * bound
  bn = b2_model.encoder.bn1
  assert bool(jnp.all(bn.scale[...] == 1)) and bool(jnp.all(bn.bias[...] == 0))


def test_initializers_same_eager_and_traced():
  # The traced init compiled at the eager draws' level, as users compile both (the
  # tests' XLA_FLAGS ask for level 0; on jax 0.10 normal draws then differ in the last bit).
  key = jax.random.key(3)
  for shape in [(3, 3, 1, 40), (1, 1, 300, 700)]:
    for init in (layers.variance_scaling(2.0, "fan_out", "normal"),
                 layers.variance_scaling(1.0, "fan_avg", "uniform")):
      traced = jax.jit(init, static_argnums=1, compiler_options=layers.CHUNK_COMPILER_OPTIONS)
      np.testing.assert_array_equal(init(key, shape), traced(key, shape))


@pytest.mark.parametrize("kernel,stride,height,width", [(3, 1, 8, 8), (5, 2, 7, 10)])
def test_depthwise_taps_match_grouped_conv(kernel, stride, height, width):
  pad = layers.torch_padding(kernel, stride)
  padding = ((pad, pad), (pad, pad))
  x, w = _normal((2, height, width, 6)), _normal((kernel, kernel, 1, 6), seed=1)

  def grouped(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=6, precision=jax.lax.Precision.HIGHEST)

  def taps(x, w):
    return conv_formulations.depthwise_conv_taps(x, w, (stride, stride), padding)

  def value_and_grads(conv):
    return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))),
                                      argnums=(0, 1)))(x, w)

  np.testing.assert_allclose(jax.jit(taps)(x, w), grouped(x, w), atol=1e-5)
  (got, got_grads), (want, want_grads) = value_and_grads(taps), value_and_grads(grouped)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for got_g, want_g in zip(got_grads, want_grads):
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-4)


def test_drop_path_is_stochastic_in_train_and_off_in_eval():
  block = InvertedResidual(8, 8, 3, 1, 6, drop_path_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
  assert block.has_skip and block.drop_path is not None
  x = _normal((8, 8, 8, 8))
  forward = nnx.jit(lambda m, x: m(x))
  block.eval()
  np.testing.assert_array_equal(forward(block, x), forward(block, x))
  block.train()
  y1, y2 = forward(block, x), forward(block, x)
  per_sample = jnp.max(jnp.abs(y1 - y2), axis=(1, 2, 3))
  assert bool(jnp.any(per_sample > 0))  # fresh per-sample masks on each call
  assert bool(jnp.any(per_sample == 0))  # whole samples keep / drop together


# ------------------------------------------------- numerics vs PyTorch (optional extra)


def test_matches_pytorch_reference():
  torch, _, smp = torch_reference.import_reference()
  torch.manual_seed(0)
  reference = smp.Unet("tu-efficientnet_b2", encoder_weights=None, classes=1,
                       activation="sigmoid", in_channels=4)
  # non-trivial BN statistics so eval mode is tested too
  torch_copy.randomize_batch_norm(torch, reference)
  model = build_model(_config("efficientnet_b2", in_channels=4), rngs=nnx.Rngs(0))
  torch_copy.load_state_dict(model, reference.state_dict(), torch_copy.smp_rename("depth"))

  x = np.random.default_rng(0).normal(size=(2, 64, 96, 4)).astype(np.float32)
  x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2))
  to_nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)

  def forward(model, x):  # -> (features, depth, state after the pass)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x):
      m = nnx.merge(graphdef, state, copy=True)
      features = m.encoder(x)
      return features, m.heads["depth"](m.decoders["depth"](features)), nnx.state(m)

    return run(state, x)

  reference.eval()
  model.eval()
  with torch.no_grad():
    want_features = [to_nhwc(f) for f in reference.encoder(x_torch)[1:]]
    want = to_nhwc(reference(x_torch))
  features, depth, _ = forward(model, x)
  # smp's encoder returns the input first (dropped above), then one map per stride.
  assert len(features) == len(want_features) == 5
  for got_f, want_f in zip(features, want_features):
    assert got_f.shape == want_f.shape
    np.testing.assert_allclose(got_f, want_f, atol=1e-5)
  np.testing.assert_allclose(depth, want, atol=1e-5)

  # Train mode: batch statistics (one pass, so the running stats move exactly once).
  reference.train()
  model.train()
  with torch.no_grad():
    want = to_nhwc(reference(x_torch))
  _, depth, state = forward(model, x)
  np.testing.assert_allclose(depth, want, atol=2e-4)
  for path in (("bn1",), ("blocks", 1, 1, "bn2")):
    torch_bn, bn = reference.encoder.model, state["encoder"]
    for p in path:
      torch_bn, bn = (torch_bn[p] if isinstance(p, int) else getattr(torch_bn, p)), bn[p]
    np.testing.assert_allclose(bn["mean"][...], torch_bn.running_mean.numpy(), atol=1e-6)
    # Like PyTorch, running_var moves towards the unbiased batch variance.
    np.testing.assert_allclose(bn["var"][...], torch_bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_batchnorm_matches_numpy_pytorch_semantics():
  from smd_jax.models import layers
  x = np.random.default_rng(0).normal(2.0, 3.0, (2, 3, 5, 4)).astype(np.float32)
  bn = layers.BatchNorm(4)
  y = np.asarray(bn(jnp.asarray(x)))
  flat = x.reshape(-1, 4).astype(np.float64)
  mean, var = flat.mean(0), flat.var(0)  # normalise with the biased variance
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
  n = flat.shape[0]
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  bn.use_running_average = True
  np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))),
                             (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5),
                             atol=1e-5)
