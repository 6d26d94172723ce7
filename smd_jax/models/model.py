"""Top-level dense-prediction model: one shared encoder, one decoder + head per task."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smd_jax.models import layers

RGB_CHANNELS = 3
# The encoder's first conv, by attribute name (timm EfficientNet, ResNet).
STEM_ATTRIBUTES = ("conv_stem", "conv1")


def _torch_uniform_stem(kernel: jax.Array, key: jax.Array) -> jax.Array:
  """Input channels after RGB ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = kh*kw*C_in of
  the widened conv: PyTorch's default Conv2d init, which the authors' widened stem
  keeps for its new channels (`extend_first_convolution`, charyyev/semantic_md
  `model_utils.py`: a fresh nn.Conv2d whose first 3 input channels are then overwritten
  with the RGB filters)."""
  kh, kw, cin, cout = kernel.shape
  bound = 1.0 / np.sqrt(kh * kw * cin)
  extra = layers.uniform_init(bound)(key, (kh, kw, cin - RGB_CHANNELS, cout), kernel.dtype)
  return kernel.at[:, :, RGB_CHANNELS:, :].set(extra)


# How the input channels beyond RGB of the encoder's first conv are initialised
# (config `model.stem_init`): "encoder" (None: nothing to do, no random key drawn)
# keeps the encoder's own init (timm's normal); "torch_uniform" is the authors'. The RGB filters are the encoder's either way (and
# are replaced by ImageNet's when `init_from` loads them; the extra channels are kept).
STEM_INITS: dict[str, Callable[[jax.Array, jax.Array], jax.Array] | None] = {
    "encoder": None,
    "torch_uniform": _torch_uniform_stem,
}


def _torch_default_convs(module: nnx.Module, rngs: nnx.Rngs) -> None:
  """Every conv of ``module``: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  fan_in = kh * kw * C_in / groups (PyTorch's Conv2d.reset_parameters:
  kaiming_uniform_(a=sqrt(5)) for the weight, the same bound for the bias). BatchNorm
  stays 1 / 0 as in PyTorch. (Drawn by `layers.uniform_init`: one compiled program for
  every shape, where `jax.random.uniform` compiled one per shape, ~0.04 s each.)"""
  for _, conv in nnx.iter_modules(module):
    if not isinstance(conv, nnx.Conv):
      continue
    kernel = conv.kernel.get_value()
    draw = layers.uniform_init(1.0 / np.sqrt(np.prod(kernel.shape[:-1])))
    conv.kernel.set_value(draw(rngs.params(), kernel.shape, kernel.dtype))
    if conv.bias is not None:
      bias = conv.bias.get_value()
      conv.bias.set_value(draw(rngs.params(), bias.shape, bias.dtype))


# How the decoders and heads are initialised (config `model.branch_init`): "smp" (None:
# as built, smp's `initialize()`: kaiming-uniform(relu) decoder convs, xavier-uniform
# heads, zero biases; what the authors' single-task smp models get) or "torch"
# (PyTorch's default conv init: the authors' multi-task models build bare smp decoders
# and heads and never call `initialize()`).
BRANCH_INITS: dict[str, Callable[[nnx.Module, nnx.Rngs], None] | None] = {
    "smp": None,
    "torch": _torch_default_convs,
}


def init_branches(modules: Mapping[str, nnx.Module], name: str, rngs: nnx.Rngs) -> None:
  """Applies `BRANCH_INITS[name]` to each module of ``modules`` in key order, in place."""
  if name not in BRANCH_INITS:
    raise ValueError(f"Unknown branch_init {name!r}; known: {sorted(BRANCH_INITS)}")
  init = BRANCH_INITS[name]
  if init is None:
    return
  for key in sorted(modules):
    init(modules[key], rngs)


def init_stem(encoder: nnx.Module, name: str, rngs: nnx.Rngs) -> None:
  """Applies `STEM_INITS[name]` to ``encoder``'s first conv in place when it has input
  channels beyond RGB (encoders without a `STEM_ATTRIBUTES` conv are left alone)."""
  if name not in STEM_INITS:
    raise ValueError(f"Unknown stem_init {name!r}; known: {sorted(STEM_INITS)}")
  init = STEM_INITS[name]
  for attr in STEM_ATTRIBUTES:
    conv = getattr(encoder, attr, None)
    if (init is not None and isinstance(conv, nnx.Conv)
        and conv.kernel.get_value().shape[2] > RGB_CHANNELS):
      conv.kernel.set_value(init(conv.kernel.get_value(), rngs.params()))
      return


class DenseModel(nnx.Module):
  """[input block ->] shared encoder -> per-task decoder -> per-task head.

  ``__call__(x [B, H, W, C]) -> {task: [B, H, W, num_outputs] float32}``. H and W must
  be multiples of the encoder's largest stride (``max(encoder.reductions)``: 32, or 8
  for a dilated DeepLabV3 encoder) so skips line up, as in smp. The model only
  predicts; losses live in ``smd_jax.losses``.

  With an ``input_block`` (e.g. the paper's semantic convolution), the input is
  ``[B, H, W, 3 + k]``: RGB in the first 3 channels, k semantic channels after them;
  the encoder sees ``concat(rgb, input_block(semantic))``.

  Train/eval: ``model.train()`` (BatchNorm batch statistics, drop path / dropout on)
  and ``model.eval()`` (running statistics, deterministic). The mode is a static
  attribute, so ``nnx.split`` gives a different graphdef per mode.
  """

  def __init__(self, encoder: nnx.Module, decoders: Mapping[str, nnx.Module],
               heads: Mapping[str, nnx.Module], input_block: nnx.Module | None = None):
    if set(decoders) != set(heads):
      raise ValueError(f"decoders {sorted(decoders)} and heads {sorted(heads)} differ")
    self.input_block = input_block
    self.encoder = encoder
    self.decoders = nnx.Dict(dict(decoders))
    self.heads = nnx.Dict(dict(heads))
    self.tasks: tuple[str, ...] = tuple(sorted(decoders))

  def encoder_inputs(self, x: jax.Array) -> jax.Array:
    """The encoder's input: x itself, or RGB + the input block's channels."""
    if self.input_block is None:
      return x
    rgb, extra = x[..., :RGB_CHANNELS], x[..., RGB_CHANNELS:]
    return jnp.concatenate([rgb, self.input_block(extra).astype(rgb.dtype)], axis=-1)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    stride = max(self.encoder.reductions)
    if x.ndim != 4 or x.shape[1] % stride or x.shape[2] % stride:
      raise ValueError(f"Expected [B, H, W, C] with H, W multiples of {stride}, "
                       f"got shape {x.shape}")
    features = self.encoder(self.encoder_inputs(x))
    return {task: self.heads[task](self.decoders[task](features)) for task in self.tasks}
