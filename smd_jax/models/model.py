"""Top-level dense-prediction model: one shared encoder, one decoder + head per task."""

from __future__ import annotations

from typing import Mapping

import jax
from flax import nnx


class DenseModel(nnx.Module):
  """Shared encoder -> per-task decoder -> per-task head.

  ``__call__(x [B, H, W, C]) -> {task: [B, H, W, num_outputs] float32}``. H and W must
  be multiples of the encoder's largest stride (32) so skips line up, as in smp. The
  model only predicts; losses live in ``smd_jax.losses``.

  Train/eval: ``model.train()`` (BatchNorm batch statistics, drop path on) and
  ``model.eval()`` (running statistics, deterministic). The mode is a static attribute,
  so ``nnx.split`` gives a different graphdef per mode.
  """

  def __init__(self, encoder: nnx.Module, decoders: Mapping[str, nnx.Module],
               heads: Mapping[str, nnx.Module]):
    if set(decoders) != set(heads):
      raise ValueError(f'decoders {sorted(decoders)} and heads {sorted(heads)} differ')
    self.encoder = encoder
    self.decoders = nnx.Dict(dict(decoders))
    self.heads = nnx.Dict(dict(heads))
    self.tasks: tuple[str, ...] = tuple(sorted(decoders))

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    stride = max(self.encoder.reductions)
    if x.ndim != 4 or x.shape[1] % stride or x.shape[2] % stride:
      raise ValueError(f'Expected [B, H, W, C] with H, W multiples of {stride}, '
                       f'got shape {x.shape}')
    features = self.encoder(x)
    return {task: self.heads[task](self.decoders[task](features)) for task in self.tasks}
