"""model.stem_init: the authors' init of the stem's input channels beyond RGB, and
model.head_kernel_size overriding the decoder's head size."""

import functools

import ml_collections
import numpy as np
import pytest
from flax import nnx

from smd_jax.models import build_model, efficientnet, registry


def _config(**fields):
  base = dict(encoder="tiny", decoder="unet", in_channels=7, decoder_channels=(16, 8, 8, 8, 8),
              heads={"depth": {"num_outputs": 1, "activation": "sigmoid"}})
  return ml_collections.ConfigDict({**base, **fields})


@pytest.fixture
def tiny(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, "tiny",
                      functools.partial(efficientnet.EfficientNet, 0.25, 0.1))


def test_torch_uniform_stem_channels(tiny):
  ours = build_model(_config(stem_init="encoder"), rngs=nnx.Rngs(3))
  theirs = build_model(_config(stem_init="torch_uniform"), rngs=nnx.Rngs(3))
  a = np.asarray(ours.encoder.conv_stem.kernel.get_value())
  b = np.asarray(theirs.encoder.conv_stem.kernel.get_value())
  # RGB filters: the encoder's own init either way (ImageNet's replace them later).
  np.testing.assert_array_equal(a[:, :, :3], b[:, :, :3])
  # PyTorch's default Conv2d init of the widened 3x3 conv with 7 inputs: U(+-1/sqrt(63)).
  bound = 1 / np.sqrt(3 * 3 * 7)
  extra = b[:, :, 3:]
  assert np.abs(extra).max() <= bound
  assert np.abs(extra).max() > 0.9 * bound  # fills the interval (288 draws)
  np.testing.assert_allclose(extra.std(), bound / np.sqrt(3), rtol=0.15)  # uniform's std
  assert not np.allclose(a[:, :, 3:], extra)
  with pytest.raises(ValueError, match="torch_uniform"):
    build_model(_config(stem_init="xavier"), rngs=nnx.Rngs(0))


def test_head_kernel_size_overrides_the_decoder(tiny):
  config = _config(decoder="deeplabv3", decoder_channels=16, head_kernel_size=3)
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  assert model.heads["depth"].conv.kernel.get_value().shape[:2] == (3, 3)
  assert model.heads["depth"].upsampling == 8
  config.head_kernel_size = None
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  assert model.heads["depth"].conv.kernel.get_value().shape[:2] == (1, 1)


def _convs(module):
  return [(p, m) for p, m in nnx.iter_modules(module) if isinstance(m, nnx.Conv)]


def test_torch_branch_init_is_pytorch_default(tiny):
  config = _config(heads={"depth": {"num_outputs": 1}, "semantic": {"num_outputs": 40}})
  smp = build_model(config, rngs=nnx.Rngs(5))
  config.branch_init = "torch"
  torch = build_model(config, rngs=nnx.Rngs(5))
  # The encoder is untouched (drawn before the branches).
  for (_, a), (_, b) in zip(_convs(smp.encoder), _convs(torch.encoder)):
    np.testing.assert_array_equal(a.kernel.get_value(), b.kernel.get_value())
  for part in ("decoders", "heads"):
    for (path, conv), (_, smp_conv) in zip(_convs(getattr(torch, part)),
                                           _convs(getattr(smp, part))):
      kernel = np.asarray(conv.kernel.get_value())
      bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))  # fan_in = kh * kw * C_in
      assert np.abs(kernel).max() <= bound, path
      if kernel.size >= 100:
        assert np.abs(kernel).max() > 0.8 * bound, path
      if part == "decoders" and kernel.size >= 100:
        # smp's kaiming-uniform (relu) decoder bound is sqrt(6) times wider. (Its xavier
        # head bound can equal PyTorch's: 40 outputs of a 3x3x8 conv give both 1/sqrt(72).)
        assert np.abs(np.asarray(smp_conv.kernel.get_value())).max() > bound, path
      if conv.bias is not None:  # heads: PyTorch draws the bias too; smp zeroes it
        bias = np.asarray(conv.bias.get_value())
        assert np.abs(bias).max() <= bound and np.any(bias != 0), path
        assert not np.any(np.asarray(smp_conv.bias.get_value())), path
  with pytest.raises(ValueError, match="torch"):
    build_model(_config(branch_init="kaiming"), rngs=nnx.Rngs(0))
