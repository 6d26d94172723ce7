"""Model inputs: the RGB image plus an optional semantic input transform.

Transforms run on device inside the jitted step, so the data pipeline never
knows which variant is trained. A transform maps the int label map
`semantic` [B,H,W] (-1 unlabelled, else NYU40 ids 1..40) to extra input
channels [B,H,W,k] that are concatenated to the normalised RGB image
(Semantic-MD eq. 3: x = [x_RGB, T(x_sem)]). Transforms are chosen by name
from `SEMANTIC_TRANSFORMS`; `EXTRA_CHANNELS` gives each one's k, which sizes
the encoder's first convolution. The learned 'semantic convolution' variant
is a transform (the paper row: `labels_raw`) followed by a model block
(`model.input_block`), so the block lives with the models, not here.

The paper rows use the transforms as the authors' code (charyyev/semantic_md,
`source/utils/conversions.py`, `source/datasets/hypersim_dataset.py`) builds them:
`concat` = clip(label, 0) / 40; `onehot40/20/3` = k channels in prevalence order
with all-zero vectors for the other classes and for unlabelled pixels; `contours`;
`labels_raw` = the label map itself as one float channel (-1, 1..40), which their
semantic convolution reads. `onehot20_other` / `onehot3_other` add one "other"
channel for the remaining labelled classes (our variant, configs/paper/variants/).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# timm's ImageNet statistics: the encoders start from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NUM_NYU40_CLASSES = 40
# NYU40 ids by how often they occur in HyperSim, most frequent first (the order
# the Semantic-MD authors used for their one-hot-k inputs; docs/method.md).
PREVALENCE_ORDER = (1, 2, 22, 9, 38, 5, 3, 40, 7, 6, 13, 8, 35, 20, 4, 14, 39, 18, 11, 12,
                    10, 23, 19, 36, 15, 25, 34, 17, 24, 21, 32, 16, 27, 29, 26, 33, 30, 31,
                    37, 28)

Transform = Callable[[jax.Array], jax.Array]


def no_semantics(semantic: jax.Array) -> jax.Array:
  return jnp.zeros(semantic.shape + (0,), jnp.float32)


def concat_labels(semantic: jax.Array) -> jax.Array:
  """The raw label map as one channel, scaled to [0, 1] (-1 -> 0): the paper's 'concat'."""
  return (jnp.maximum(semantic, 0).astype(jnp.float32) / NUM_NYU40_CLASSES)[..., None]


def _rank_lookup(num_classes: int, other_channel: bool) -> np.ndarray:
  """Table NYU40 id + 1 -> one-hot channel (-1 = no channel), ids -1..40."""
  table = np.full(NUM_NYU40_CLASSES + 2, -1, np.int32)
  for rank, label in enumerate(PREVALENCE_ORDER):
    if rank < num_classes:
      table[label + 1] = rank
    elif other_channel:
      table[label + 1] = num_classes
  return table


def one_hot_by_prevalence(semantic: jax.Array, num_classes: int,
                          other_channel: bool = True) -> jax.Array:
  """One-hot over the `num_classes` most frequent classes (Semantic-MD eq. 4).

  Channel i is the i-th class of `PREVALENCE_ORDER`. With `other_channel`, labelled
  pixels of the remaining classes share one extra last channel (docs/method.md); the
  reference code gave them all-zero vectors instead (`other_channel=False`).
  Unlabelled pixels (-1) are all zero either way. [B,H,W] -> [B,H,W,k(+1)].
  """
  has_other = other_channel and num_classes < NUM_NYU40_CLASSES
  table = jnp.asarray(_rank_lookup(num_classes, has_other))
  index = jnp.clip(semantic.astype(jnp.int32) + 1, 0, NUM_NYU40_CLASSES + 1)
  # jax.nn.one_hot gives all zeros for index -1: no channel.
  return jax.nn.one_hot(table[index], num_classes + int(has_other), dtype=jnp.float32)


def label_contours(semantic: jax.Array) -> jax.Array:
  """1 where the 3x3 dilation and erosion of the label map differ, else 0 (int32).

  Semantic-MD eq. 5; matches OpenCV's erode/dilate with a 3x3 box, whose default
  border leaves pixels outside the image out of the min and max. Unlabelled (-1)
  counts as a label of its own, so labelled/unlabelled borders are contours.
  [B,H,W] -> [B,H,W].
  """
  x = semantic.astype(jnp.float32)
  window = lambda init, op: jax.lax.reduce_window(x, init, op, (1, 3, 3), (1, 1, 1), "SAME")
  # reduce_window pads with the init value, so padding never wins the max / min.
  dilated = window(-jnp.inf, jax.lax.max)
  eroded = window(jnp.inf, jax.lax.min)
  return (dilated > eroded).astype(jnp.int32)


def contour_channel(semantic: jax.Array) -> jax.Array:
  return label_contours(semantic).astype(jnp.float32)[..., None]


def raw_labels(semantic: jax.Array) -> jax.Array:
  """The label map unchanged as one float channel: -1 (unlabelled) or NYU40 ids 1..40,
  not normalised. What the authors' semantic convolution is fed (`input_segs`, the
  resized, cropped label map as float32). [B,H,W] -> [B,H,W,1]."""
  return semantic.astype(jnp.float32)[..., None]


SEMANTIC_TRANSFORMS: dict[str, Transform] = {
    "none": no_semantics,
    "concat": concat_labels,
    "onehot40": functools.partial(one_hot_by_prevalence, num_classes=40),
    # The authors' one-hot-k: the other classes are all-zero vectors.
    "onehot20": functools.partial(one_hot_by_prevalence, num_classes=20, other_channel=False),
    "onehot3": functools.partial(one_hot_by_prevalence, num_classes=3, other_channel=False),
    # Our variant: + one channel shared by the remaining labelled classes.
    "onehot20_other": functools.partial(one_hot_by_prevalence, num_classes=20),
    "onehot3_other": functools.partial(one_hot_by_prevalence, num_classes=3),
    "contours": contour_channel,
    "labels_raw": raw_labels,
}


def _output_channels(transform: Transform) -> int:
  """k of a transform, read off its output shape (traced abstractly, nothing computed)."""
  labels = jax.ShapeDtypeStruct((1, 8, 8), jnp.int16)
  return int(jax.eval_shape(transform, labels).shape[-1])


# Each transform's k, derived from the transform itself so the two never disagree.
EXTRA_CHANNELS: dict[str, int] = {name: _output_channels(fn)
                                  for name, fn in SEMANTIC_TRANSFORMS.items()}


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
