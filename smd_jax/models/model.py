"""Top-level dense-prediction model: one shared encoder, one decoder + head per task."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

RGB_CHANNELS = 3


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
