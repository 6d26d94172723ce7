"""ResNet-50, DeepLabV3 (output stride 8) and the semantic-convolution input block,
against the PyTorch references (timm 0.9.2, segmentation-models-pytorch 0.3.3,
torchvision).

Parameter counts are checked abstractly (``nnx.eval_shape``: nothing compiles) against
numbers measured from the live reference models, which the ``*_live`` tests rebuild
where torch is installed. Parity tests copy random torch weights (random BN running
statistics too) into our models and compare eval-mode forwards on small inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from smd_jax.models import DenseModel, build_model, layers, registry
from smd_jax.models.semantic_conv import SemanticConv
from tests import torch_copy, torch_reference

DEPTH_HEAD = {"depth": {"num_outputs": 1, "activation": "sigmoid"}}

# (encoder, decoder) -> (smp model, total params, encoder params), smp 0.3.3 with
# encoder_weights=None, classes=1. 20,989,513 is also the paper's DeepLabV3-B4.
REFERENCE = {
    ("efficientnet_b4", "deeplabv3"): ("DeepLabV3('tu-efficientnet_b4')", 20_989_513,
                                       16_742_216),
    ("efficientnet_b2", "deeplabv3"): ("DeepLabV3('tu-efficientnet_b2')", 10_737_155,
                                       7_202_562),
    ("resnet50", "unet"): ("Unet('resnet50')", 32_521_105, 23_508_032),
    ("resnet50", "deeplabv3"): ("DeepLabV3('resnet50')", 39_633_729, 23_508_032),
}
SMP_NAMES = {"efficientnet_b2": "tu-efficientnet_b2", "efficientnet_b4": "tu-efficientnet_b4",
             "resnet50": "resnet50"}
RESNET50_CHANNELS = (64, 256, 512, 1024, 2048)
# SemanticConv(40): conv3x3 40*9*8 + BN 16; MBConv 8*48 + 96, 9*48 + 96, SE 48*2+2 +
# 2*48+48, 48*8 + 16; conv1x1 8*3 + BN 6.
SEMANTIC_CONV_40_PARAMS = 2880 + 16 + 480 + 528 + 98 + 144 + 400 + 24 + 6


def _config(encoder, decoder, heads=None, **overrides):
  fields = dict(encoder=encoder, decoder=decoder, in_channels=3, dtype="float32",
                heads=heads or DEPTH_HEAD)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@functools.cache
def _abstract_model(encoder, decoder, in_channels=3, input_block=None):
  config = _config(encoder, decoder, in_channels=in_channels, input_block=input_block)
  return nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))


def _num_params(module):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _torch_params(module):
  return sum(p.numel() for p in module.parameters())


def _apply_shapes(module, fn, x_shape, dtype=jnp.float32):
  graphdef, state = nnx.split(module)
  return jax.eval_shape(lambda s, x: fn(nnx.merge(graphdef, s, copy=True), x), state,
                        jax.ShapeDtypeStruct(x_shape, dtype))


def _smp_model(smp, encoder, decoder, **kwargs):
  cls = {"unet": smp.Unet, "deeplabv3": smp.DeepLabV3}[decoder]
  return cls(SMP_NAMES[encoder], encoder_weights=None, classes=1, **kwargs)


# ------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("encoder,decoder", sorted(REFERENCE))
def test_param_counts(encoder, decoder):
  _, total, encoder_params = REFERENCE[(encoder, decoder)]
  model = _abstract_model(encoder, decoder)
  assert _num_params(model) == total
  assert _num_params(model.encoder) == encoder_params


def test_deeplabv3_b4_is_the_reference_size():
  assert _num_params(_abstract_model("efficientnet_b4", "deeplabv3")) == 20_989_513


@pytest.mark.parametrize("encoder,decoder", sorted(REFERENCE))
def test_param_counts_live(encoder, decoder):
  torch, _, smp = torch_reference.import_reference()
  reference = _smp_model(smp, encoder, decoder)
  model = _abstract_model(encoder, decoder)
  assert _num_params(model) == _torch_params(reference) == REFERENCE[(encoder, decoder)][1]
  assert _num_params(model.encoder) == _torch_params(reference.encoder)
  assert tuple(reference.encoder.out_channels[1:]) == model.encoder.out_channels


def test_resnet50_encoder_matches_torchvision():
  torch, _, _ = torch_reference.import_reference()
  import torchvision  # pylint: disable=g-import-not-at-top
  reference = torchvision.models.resnet50()
  encoder = _abstract_model("resnet50", "unet").encoder
  fc = _torch_params(reference.fc)
  assert _num_params(encoder) == _torch_params(reference) - fc == 23_508_032
  # Same names and shapes (OIHW -> HWIO) as torchvision's state dict, fc aside.
  ours = {".".join(map(str, k)): v.get_value().shape
          for k, v in nnx.to_flat_state(nnx.state(encoder, nnx.Param))}
  theirs = {}
  for name, p in reference.named_parameters():
    if name.startswith("fc."):
      continue
    name = name.replace(".weight", ".kernel" if p.ndim == 4 else ".scale")
    theirs[name] = tuple(p.shape[2:]) + (p.shape[1], p.shape[0]) if p.ndim == 4 else tuple(
        p.shape)
  assert ours == theirs
  del torch


def _torch_semantic_conv(torch, in_channels):
  """The reference block (charyyev/semantic_md SemanticConvolutionModel.convolution),
  with ``in_channels`` semantic channels instead of its single label channel."""
  from torchvision.models import efficientnet as tv  # pylint: disable=g-import-not-at-top
  config = tv.MBConvConfig(expand_ratio=6, kernel=3, stride=1, input_channels=1,
                           out_channels=3, num_layers=1, width_mult=1.4, depth_mult=1.8)
  nn = torch.nn
  return nn.Sequential(
      nn.Conv2d(in_channels, 8, kernel_size=3, padding=1, bias=False),
      nn.BatchNorm2d(8),
      tv.MBConv(config, 0.2, nn.BatchNorm2d),
      nn.Conv2d(8, 3, kernel_size=1, bias=False),
      nn.BatchNorm2d(3),
      nn.Sigmoid())


def test_semantic_conv_param_count():
  block = nnx.eval_shape(lambda: SemanticConv(40, rngs=nnx.Rngs(0)))
  assert _num_params(block) == SEMANTIC_CONV_40_PARAMS == 4576
  assert block.out_channels == 3
  assert block.mbconv.conv_pw.kernel.shape == (1, 1, 8, 48)
  assert block.mbconv.se.conv_reduce.kernel.shape == (1, 1, 48, 2)
  assert block.mbconv.has_skip and block.mbconv.drop_path.rate == 0.2


def test_semantic_conv_param_count_live():
  torch, _, _ = torch_reference.import_reference()
  reference = _torch_semantic_conv(torch, 40)
  assert _torch_params(reference) == SEMANTIC_CONV_40_PARAMS


# ------------------------------------------------------------ layout / output stride


@pytest.mark.parametrize("encoder,channels", [
    ("efficientnet_b2", (16, 24, 48, 120, 352)),
    ("resnet50", RESNET50_CHANNELS),
])
@pytest.mark.parametrize("output_stride,reductions", [
    (32, (2, 4, 8, 16, 32)), (16, (2, 4, 8, 16, 16)), (8, (2, 4, 8, 8, 8))])
def test_feature_shapes_and_reductions(encoder, channels, output_stride, reductions):
  enc = nnx.eval_shape(lambda: registry.ENCODERS[encoder](
      in_channels=3, output_stride=output_stride, rngs=nnx.Rngs(0)))
  assert enc.out_channels == channels
  assert enc.reductions == reductions
  features = _apply_shapes(enc, lambda m, x: m(x), (2, 64, 96, 3))
  assert [f.shape for f in features] == [
      (2, 64 // r, 96 // r, c) for r, c in zip(reductions, channels)]


def test_output_stride_keeps_parameters():
  for name in ("efficientnet_b2", "resnet50"):
    sizes = {os: _num_params(nnx.eval_shape(lambda os=os: registry.ENCODERS[name](
        output_stride=os, rngs=nnx.Rngs(0)))) for os in (8, 32)}
    assert sizes[8] == sizes[32]


def test_resnet50_dilation_layout_is_smps():
  enc = _abstract_model("resnet50", "deeplabv3").encoder
  # smp make_dilated(8): every conv of layer3 dilation 2, of layer4 dilation 4, stride 1.
  for layer, dilation in ((enc.layer3, 2), (enc.layer4, 4)):
    for block in layer:
      assert block.conv2.kernel_dilation == (dilation, dilation)
      assert block.conv2.strides == (1, 1)
      assert block.conv2.padding == ((dilation, dilation),) * 2
    assert layer[0].downsample[0].strides == (1, 1)
  assert enc.layer2[0].conv2.strides == (2, 2) and enc.layer2[0].conv2.padding == ((1, 1),) * 2
  assert enc.conv1.padding == ((3, 3), (3, 3))


def test_efficientnet_dilation_layout_matches_timm():
  _, timm, _ = torch_reference.import_reference()
  reference = timm.create_model("efficientnet_b2", features_only=True, output_stride=8)
  enc = _abstract_model("efficientnet_b2", "deeplabv3").encoder
  assert enc.reductions == tuple(reference.feature_info.reduction())
  for stage, ref_stage in zip(enc.blocks, reference.blocks):
    for block, ref_block in zip(stage, ref_stage):
      assert block.conv_dw.strides == tuple(ref_block.conv_dw.stride)
      assert block.conv_dw.kernel_dilation == tuple(ref_block.conv_dw.dilation)
      assert block.conv_dw.padding == tuple((p, p) for p in ref_block.conv_dw.padding)


def test_deeplab_structure():
  model = _abstract_model("efficientnet_b4", "deeplabv3")
  decoder, head = model.decoders["depth"], model.heads["depth"]
  assert [b.conv.kernel_dilation for b in decoder.aspp.convs[1:4]] == [
      (12, 12), (24, 24), (36, 36)]
  assert decoder.aspp.convs[0].conv.kernel.shape == (1, 1, 448, 256)
  assert decoder.aspp.project.conv.kernel.shape == (1, 1, 5 * 256, 256)
  assert decoder.aspp.dropout.rate == 0.5
  assert head.conv.kernel.shape == (1, 1, 256, 1) and head.upsampling == 8
  out = _apply_shapes(model, lambda m, x: m(x), (2, 64, 96, 3))
  assert out["depth"].shape == (2, 64, 96, 1) and out["depth"].dtype == jnp.float32
  unet_head = _abstract_model("resnet50", "unet").heads["depth"]
  assert unet_head.conv.kernel.shape == (3, 3, 16, 1) and unet_head.upsampling == 1


def test_deeplab_input_size_is_a_multiple_of_8():
  model = _abstract_model("resnet50", "deeplabv3")
  assert max(model.encoder.reductions) == 8
  assert _apply_shapes(model, lambda m, x: m(x), (1, 40, 56, 3))["depth"].shape == (
      1, 40, 56, 1)
  with pytest.raises(ValueError, match="multiples of 8"):
    _apply_shapes(model, lambda m, x: m(x), (1, 36, 56, 3))


def test_registries():
  assert "resnet50" in registry.ENCODERS
  assert "deeplabv3" in registry.DECODERS
  assert "semantic_conv" in registry.INPUT_BLOCKS
  with pytest.raises(ValueError, match="semantic_conv"):
    build_model(_config("resnet50", "unet", input_block="sobel", in_channels=43),
                rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_channels must be > 3"):
    build_model(_config("resnet50", "unet", input_block="semantic_conv"), rngs=nnx.Rngs(0))


def test_semantic_conv_model_structure():
  model = _abstract_model("efficientnet_b2", "unet", in_channels=43,
                          input_block="semantic_conv")
  assert isinstance(model.input_block, SemanticConv)
  assert model.input_block.in_channels == 40
  assert model.encoder.conv_stem.kernel.shape == (3, 3, 6, 32)  # RGB + 3 block channels
  plain = _abstract_model("efficientnet_b2", "unet", in_channels=6)
  assert _num_params(model) == _num_params(plain) + SEMANTIC_CONV_40_PARAMS
  out = _apply_shapes(model, lambda m, x: m(x), (2, 64, 64, 43))
  assert out["depth"].shape == (2, 64, 64, 1)
  assert _abstract_model("efficientnet_b2", "unet").input_block is None


# ------------------------------------------------------------------ real execution


def _rng_normal(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _jit_forward(model):
  """Eval-mode jitted forward -> (encoder features, outputs)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    features = m.encoder(m.encoder_inputs(x))
    return features, m(x)

  return lambda x: run(state, x)


def _to_nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _max_diff(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)))


# DeepLabV3 on EfficientNet-b4 at 2x64x96 in eval mode, with a bound of 1e-4 absolute
# on every feature map and output, is tests/test_convert_fidelity.py's
# test_smp_model_matches_smp[deeplabv3] (plus train mode): not compiled twice here.
@pytest.mark.parametrize("encoder,decoder,height,width", [
    ("resnet50", "unet", 64, 96),
    ("resnet50", "deeplabv3", 64, 64),
])
def test_matches_pytorch_reference(encoder, decoder, height, width):
  torch, _, smp = torch_reference.import_reference()
  torch.manual_seed(0)
  reference = _smp_model(smp, encoder, decoder)  # logits: a sigmoid would hide errors
  torch_copy.randomize_batch_norm(torch, reference)
  reference.eval()
  model = build_model(_config(encoder, decoder, heads={"depth": {"num_outputs": 1}}),
                      rngs=nnx.Rngs(0))
  torch_copy.load_state_dict(model, reference.state_dict(), torch_copy.smp_rename("depth"))
  model.eval()

  x = _rng_normal((2, height, width, 3))
  with torch.no_grad():
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2))
    want_features = [_to_nhwc(f) for f in reference.encoder(x_torch)[1:]]
    want = _to_nhwc(reference(x_torch))
  features, outputs = _jit_forward(model)(x)
  assert len(features) == len(want_features)
  assert outputs["depth"].shape == (2, height, width, 1)
  # 1e-4 absolute for values up to 1, relative beyond: deep ResNet features reach
  # ~170 with random weights, where float32 summation-order noise is ~4e-4 (2e-6 rel).
  for got, want in [*zip(features, want_features), (outputs["depth"], want)]:
    scale = max(1.0, float(np.max(np.abs(want))))
    assert _max_diff(got, want) <= 1e-4 * scale, (got.shape, scale, _max_diff(got, want))


def test_deeplab_decoder_atrous_rates_match_smp():
  """smp's DeepLabV3Decoder (ASPP rates 12, 24, 36) on a 40x40 map, wider than the
  largest rate. The whole-model tests' 64x96 inputs give an 8x12 deepest map, where
  every dilated tap falls into the padding: they cannot tell the rates apart."""
  torch, _, _ = torch_reference.import_reference()
  from segmentation_models_pytorch.decoders.deeplabv3 import decoder as smp_deeplab  # pylint: disable=g-import-not-at-top
  from smd_jax.convert import names  # pylint: disable=g-import-not-at-top
  from smd_jax.models.deeplab import DeepLabV3Decoder  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  reference = smp_deeplab.DeepLabV3Decoder(8, 16)
  torch_copy.randomize_batch_norm(torch, reference)
  reference.eval()
  decoder = DeepLabV3Decoder((8,) * 5, 16, rngs=nnx.Rngs(0))
  torch_copy.load_state_dict(decoder, reference.state_dict(), names.decoder_path)
  decoder.eval()
  x = _rng_normal((1, 40, 40, 8))
  with torch.no_grad():
    want = _to_nhwc(reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())))
  got = nnx.jit(lambda m, x: m([x]))(decoder, x)
  assert got.shape == want.shape == (1, 40, 40, 16)
  assert _max_diff(got, want) <= 1e-4 * max(1.0, float(np.max(np.abs(want))))


def test_semantic_conv_matches_torchvision_mbconv():
  torch, _, _ = torch_reference.import_reference()
  torch.manual_seed(0)
  reference = _torch_semantic_conv(torch, 5)
  torch_copy.randomize_batch_norm(torch, reference)
  reference.eval()
  block = SemanticConv(5, rngs=nnx.Rngs(0))
  mbconv = {"0.0": "conv_pw", "0.1": "bn1", "1.0": "conv_dw", "1.1": "bn2",
            "2.fc1": "se.conv_reduce", "2.fc2": "se.conv_expand", "3.0": "conv_pwl",
            "3.1": "bn3"}

  def rename(path):
    top = {"0": "conv_in", "1": "bn_in", "3": "conv_out", "4": "bn_out"}
    if path[0] in top:
      return [top[path[0]]]
    assert path[:2] == ["2", "block"], path
    return ["mbconv"] + mbconv[".".join(path[2:])].split(".")

  torch_copy.load_state_dict(block, reference.state_dict(), rename)
  block.eval()
  x = (np.random.default_rng(0).random((2, 32, 48, 5)) < 0.3).astype(np.float32)
  with torch.no_grad():
    want = _to_nhwc(reference(torch.from_numpy(x.transpose(0, 3, 1, 2))))
  got = nnx.jit(lambda m, x: m(x))(block, x)
  assert _max_diff(got, want) <= 1e-5


def test_semantic_conv_stochastic_depth_train_only():
  block = SemanticConv(4, rngs=nnx.Rngs(0))
  x = jnp.asarray(_rng_normal((8, 8, 8, 4)))
  forward = nnx.jit(lambda m, x: m(x))
  block.train()
  y1, y2 = forward(block, x), forward(block, x)
  assert bool(jnp.any(y1 != y2))  # fresh drop masks (and BN batch statistics)
  block.eval()
  np.testing.assert_array_equal(forward(block, x), forward(block, x))


def test_model_feeds_block_output_to_encoder():
  block = SemanticConv(2, rngs=nnx.Rngs(1))
  block.eval()
  model = DenseModel(lambda x: [x], {}, {}, input_block=block)
  x = jnp.asarray(_rng_normal((2, 8, 8, 5)))
  got = np.asarray(model.encoder_inputs(x))
  np.testing.assert_array_equal(got[..., :3], np.asarray(x[..., :3]))
  np.testing.assert_allclose(got[..., 3:], np.asarray(block(x[..., 3:])), atol=1e-6)


def test_bilinear_upsampling_matches_torch():
  torch, _, _ = torch_reference.import_reference()
  x = _rng_normal((2, 5, 7, 3))
  with torch.no_grad():
    want = _to_nhwc(torch.nn.UpsamplingBilinear2d(scale_factor=8)(
        torch.from_numpy(x.transpose(0, 3, 1, 2))))
  got = jax.jit(layers.upsample_bilinear_align_corners, static_argnums=1)(x, 8)
  assert got.shape == (2, 40, 56, 3)
  assert _max_diff(got, want) <= 1e-6


def test_max_pool_matches_torch():
  torch, _, _ = torch_reference.import_reference()
  x = _rng_normal((2, 9, 12, 3)) - 3.0  # negative: padding must never win
  with torch.no_grad():
    want = _to_nhwc(torch.nn.MaxPool2d(3, 2, 1)(torch.from_numpy(x.transpose(0, 3, 1, 2))))
  np.testing.assert_array_equal(jax.jit(layers.max_pool_3x3_s2)(x), want)


def test_two_head_deeplab_builds_and_runs():
  heads = {"depth": {"num_outputs": 1, "activation": "sigmoid"},
           "semantic": {"num_outputs": 40}}
  model = build_model(_config("resnet50", "deeplabv3", heads=heads),
                      rngs=nnx.Rngs(0, dropout=1))
  assert set(model.decoders) == set(model.heads) == set(heads)
  assert model.decoders["depth"] is not model.decoders["semantic"]
  model.train()  # BN batch statistics and ASPP dropout
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    return m(x), nnx.state(m)

  x = jnp.asarray(_rng_normal((2, 32, 32, 3)))
  out, new_state = step(state, x)
  assert {k: v.shape for k, v in out.items()} == {"depth": (2, 32, 32, 1),
                                                   "semantic": (2, 32, 32, 40)}
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
  depth = np.asarray(out["depth"])
  assert np.all((depth >= 0) & (depth <= 1))
  # The dropout RNG advanced: a second step draws new masks.
  out2, _ = step(new_state, x)
  assert _max_diff(out2["semantic"], np.asarray(out["semantic"])) > 0


def test_bf16_deeplab_with_semantic_conv_shapes():
  heads = {"depth": {"num_outputs": 1, "activation": "sigmoid"},
           "semantic": {"num_outputs": 40}}
  config = _config("resnet50", "deeplabv3", heads=heads, in_channels=43, dtype="bfloat16",
                   input_block="semantic_conv")
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
  assert model.encoder.conv1.kernel.shape == (7, 7, 6, 64)
  features = _apply_shapes(model, lambda m, x: m.encoder(m.encoder_inputs(x)),
                           (2, 32, 48, 43))
  assert all(f.dtype == jnp.bfloat16 for f in features)
  out = _apply_shapes(model, lambda m, x: m(x), (2, 32, 48, 43))
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      "depth": ((2, 32, 48, 1), jnp.float32), "semantic": ((2, 32, 48, 40), jnp.float32)}
