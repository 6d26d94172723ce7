"""Model inputs: the RGB image plus an optional semantic input transform.

Transforms run on device inside the jitted step, so the data pipeline never
knows which variant is trained. A transform maps the int label map
`semantic` [B,H,W] (-1 unlabelled, else 1..40) to extra input channels
[B,H,W,k] that are concatenated to the normalised RGB image; it is chosen by
name from `SEMANTIC_TRANSFORMS`, with its channel count in `EXTRA_CHANNELS`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# timm's ImageNet statistics: the encoders start from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[jax.Array], jax.Array]


def no_semantics(semantic: jax.Array) -> jax.Array:
  return jnp.zeros(semantic.shape + (0,), jnp.float32)


SEMANTIC_TRANSFORMS: dict[str, Transform] = {"none": no_semantics}
EXTRA_CHANNELS: dict[str, int] = {"none": 0}


def get_transform(name: str) -> Transform:
  try:
    return SEMANTIC_TRANSFORMS[name]
  except KeyError:
    raise ValueError(
        f"Unknown semantic transform {name!r}; known: {sorted(SEMANTIC_TRANSFORMS)}.") from None


def normalize_image(image: jax.Array) -> jax.Array:
  """uint8 [B,H,W,3] -> float32, scaled to [0,1] then standardised per channel."""
  x = image.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def model_inputs(batch: dict[str, jax.Array], transform: str = "none") -> jax.Array:
  """[B,H,W,3+k] float32 network input from a batch of raw features."""
  extra = get_transform(transform)(batch["semantic"])
  return jnp.concatenate([normalize_image(batch["image"]), extra.astype(jnp.float32)], axis=-1)
