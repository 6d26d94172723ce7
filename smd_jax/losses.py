"""Per-task losses, selected by name from `LOSSES`.

A loss maps `(prediction, target, valid) -> scalar`. It knows nothing about data
sets or models: the caller prepares targets and the validity mask.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of `values` over pixels where `valid`; 0 when none is valid (no NaN)."""
  w = valid.astype(jnp.float32)
  total = jnp.sum(jnp.where(valid, values.astype(jnp.float32), 0.0))
  return total / jnp.maximum(jnp.sum(w), 1.0)


def l1_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean absolute error over valid pixels.

  Args:
    pred: [B,H,W] prediction. target: [B,H,W], may be NaN where not `valid`.
    valid: [B,H,W] bool.
  """
  # `where` before the subtraction keeps NaN targets out of the gradient too.
  target = jnp.where(valid, target, 0.0)
  return masked_mean(jnp.abs(pred - target), valid)


LOSSES: dict[str, LossFn] = {
    "l1": l1_loss,
}


def get_loss(name: str) -> LossFn:
  try:
    return LOSSES[name]
  except KeyError:
    raise ValueError(f"Unknown loss {name!r}; known losses: {sorted(LOSSES)}.") from None
