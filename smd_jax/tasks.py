"""Tasks: how a model output and a batch become loss inputs and metric sums.

A task knows its target (e.g. depth in metres -> clamped, normalised depth) and
its metrics; it does not know the network or which loss is used. The train step
loops over the configured tasks, so adding one is a new class and one registry
line. Config names select them: `config.tasks.<name>.kind` (default: the name).

Evaluation batches carry `mask` [B] (False for padding examples); tasks whose
targets exist everywhere (contours, edges) use it so padding counts for nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from smd_jax import metrics, semantics


class Task(Protocol):
  def loss_inputs(self, output: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(prediction, target, valid) for the task's loss."""

  def metric_sums(self, output: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-batch sums, added up over batches/devices and finalised on the host."""


@dataclasses.dataclass(frozen=True)
class DepthTask:
  """Metric depth regressed as depth / max_depth in [0, 1] (the paper clamps to 15 m).

  output: [B,H,W,1] network output in [0, 1]; batch['depth']: [B,H,W] metres,
  NaN where invalid.
  """

  max_depth: float = 15.0
  # Channels of the head this task reads (config `model.heads.<task>.num_outputs`).
  num_outputs = 1

  def valid(self, batch):
    depth = batch["depth"]
    # Padded evaluation rows carry NaN depth, but `mask` is what marks them: honour it
    # too, so a padded row counts for nothing whatever its content.
    return jnp.isfinite(depth) & (depth > 0) & example_mask(batch, depth.shape)

  def target_metres(self, batch):
    return jnp.clip(batch["depth"], 0.0, self.max_depth)

  def loss_inputs(self, output, batch):
    return output[..., 0], self.target_metres(batch) / self.max_depth, self.valid(batch)

  def predict_metres(self, output):
    return output[..., 0].astype(jnp.float32) * self.max_depth

  def metric_sums(self, output, batch):
    return metrics.depth_metric_sums(self.predict_metres(output), self.target_metres(batch),
                                     self.valid(batch))

  def finalize(self, sums):
    return metrics.finalize_depth_metrics(sums)


def example_mask(batch, shape) -> jax.Array:
  """[B,H,W] bool: True on real examples (evaluation pads batches, see data.batching)."""
  mask = batch.get("mask")
  if mask is None:
    return jnp.ones(shape, bool)
  return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (len(shape) - 1)), shape)


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """Shared part of the per-pixel classification tasks: logits [B,H,W,C] vs int targets."""

  num_outputs = 2  # C of the head: two classes (edge or not) unless a task says otherwise

  def targets(self, batch) -> tuple[jax.Array, jax.Array]:
    raise NotImplementedError

  def loss_inputs(self, output, batch):
    target, valid = self.targets(batch)
    return output, target, valid

  def predict_labels(self, output):
    return jnp.argmax(output, axis=-1).astype(jnp.int32)

  def metric_sums(self, output, batch):
    target, valid = self.targets(batch)
    # Padded evaluation rows (label -1) are marked by `mask`: they count for nothing.
    valid = valid & example_mask(batch, valid.shape)
    return metrics.segmentation_metric_sums(output, target, valid)


def _class_table(classes: tuple[int, ...]) -> np.ndarray:
  """Lookup NYU40 id + 1 (ids -1..40) -> class index, -1 = no class."""
  table = np.full(semantics.NUM_NYU40_CLASSES + 2, -1, np.int32)
  for index, label in enumerate(classes):
    table[label + 1] = index
  return table


# Class index of each NYU40 id, by `class_order` name: "nyu_id" = id - 1 (ours);
# "prevalence" = rank in semantics.PREVALENCE_ORDER (wall 0, floor 1, ceiling 2, ...),
# the authors' target (`semantic_encode` in their conversions.py), which the semantic
# heads of their checkpoints predict.
CLASS_ORDERS: dict[str, tuple[int, ...]] = {
    "nyu_id": tuple(range(1, semantics.NUM_NYU40_CLASSES + 1)),
    "prevalence": semantics.PREVALENCE_ORDER,
}


@dataclasses.dataclass(frozen=True)
class SemanticTask(ClassificationTask):
  """NYU40 semantic segmentation: class = index of the label in `CLASS_ORDERS[class_order]`
  (the first `num_classes` of that order); unlabelled (-1) and other labels are ignored."""

  num_classes: int = semantics.NUM_NYU40_CLASSES
  class_order: str = "nyu_id"

  @property
  def num_outputs(self) -> int:
    return self.num_classes

  def __post_init__(self):
    if self.class_order not in CLASS_ORDERS:
      raise ValueError(f"Unknown class_order {self.class_order!r}; known: "
                       f"{sorted(CLASS_ORDERS)}.")

  def targets(self, batch):
    table = jnp.asarray(_class_table(CLASS_ORDERS[self.class_order][:self.num_classes]))
    label = batch["semantic"].astype(jnp.int32)
    index = table[jnp.clip(label + 1, 0, semantics.NUM_NYU40_CLASSES + 1)]
    return jnp.maximum(index, 0), index >= 0

  def finalize(self, sums):
    return metrics.finalize_segmentation_metrics(sums)


@dataclasses.dataclass(frozen=True)
class ContourTask(ClassificationTask):
  """Two classes: semantic contour (3x3 dilation != erosion of the label map) or not."""

  def targets(self, batch):
    contours = semantics.label_contours(batch["semantic"])
    return contours, example_mask(batch, contours.shape)

  def finalize(self, sums):
    return metrics.finalize_contour_metrics(sums)


# OpenCV's 5x5 Sobel kernel (cv2.Sobel ksize=5): smoothing x derivative.
_SOBEL5_SMOOTH = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
_SOBEL5_DERIV = np.array([-1.0, -2.0, 0.0, 2.0, 1.0])


def sobel_gradients(image: jax.Array) -> jax.Array:
  """(d/dx, d/dy) of [B,H,W] with OpenCV's 5x5 Sobel kernels -> [B,H,W,2].

  Borders are mirrored without repeating the edge pixel, as OpenCV's default
  BORDER_REFLECT_101 does, so the image boundary is no edge. NaN spreads to every
  response whose 5x5 window holds it.
  """
  kx = np.outer(_SOBEL5_SMOOTH, _SOBEL5_DERIV)  # d/dx: along W
  kernels = jnp.asarray(np.stack([kx, kx.T], axis=-1)[:, :, None, :], image.dtype)  # HWIO
  padded = jnp.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")
  return jax.lax.conv_general_dilated(padded[..., None], kernels, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def sobel_magnitude(image: jax.Array) -> jax.Array:
  """|grad| of [B,H,W] with OpenCV's 5x5 Sobel kernels -> [B,H,W]."""
  return jnp.sqrt(jnp.sum(sobel_gradients(image)**2, axis=-1))


def _uint8_or(grad: jax.Array) -> jax.Array:
  """The authors' `cv2.bitwise_or(convertScaleAbs(Sx), convertScaleAbs(Sy))`: |.|
  rounded half to even and saturated to 0..255 (NaN -> 0), then bitwise OR."""
  mag = jnp.where(jnp.isnan(grad), 0.0, jnp.clip(jnp.round(jnp.abs(grad)), 0.0, 255.0))
  mag = mag.astype(jnp.int32)
  return jnp.bitwise_or(mag[..., 0], mag[..., 1]).astype(jnp.float32)


# How the two Sobel responses [B,H,W,2] become the edge strength [B,H,W], by name.
EDGE_STRENGTHS = {
    "magnitude": lambda grad: jnp.sqrt(jnp.sum(grad**2, axis=-1)),
    "uint8_or": _uint8_or,
}


@dataclasses.dataclass(frozen=True)
class DepthEdgeTask(ClassificationTask):
  """Two classes: depth discontinuity or not, from the ground-truth depth.

  The 'Sobel' variant of the 2-head model: a second head predicts where the 5x5
  Sobel response of the ground-truth depth (clamped to `max_depth`) exceeds
  `threshold`. Options (config `tasks.<name>.params`):

  * `normalised_depth`: False = depth in metres (a threshold of 20 is a step of
    about 0.42 m, since the kernel's weights on one side sum to 48); True = depth /
    max_depth, as the authors' `depth_to_sobel` (20 is then a step of ~6.25 m).
  * `strength`: a name in `EDGE_STRENGTHS`: "magnitude" (sqrt(Sx^2 + Sy^2)) or
    "uint8_or" (the authors' bitwise OR of the rounded, saturated |Sx| and |Sy|).
  * `mask_invalid`: True ignores pixels whose 5x5 window touches invalid depth;
    False (the authors') keeps every pixel: invalid depth is NaN there, and windows
    holding NaN give no edge ("uint8_or": NaN -> 0; "magnitude": NaN > t is False).
  """

  threshold: float = 20.0
  max_depth: float = 15.0
  normalised_depth: bool = False
  strength: str = "magnitude"
  mask_invalid: bool = True

  def __post_init__(self):
    if self.strength not in EDGE_STRENGTHS:
      raise ValueError(f"Unknown strength {self.strength!r}; known: {sorted(EDGE_STRENGTHS)}.")

  def targets(self, batch):
    depth = batch["depth"]
    real = example_mask(batch, depth.shape)
    valid = jnp.isfinite(depth) & (depth > 0) & real
    scale = 1.0 / self.max_depth if self.normalised_depth else 1.0
    clamped = jnp.clip(depth, 0.0, self.max_depth).astype(jnp.float32) * scale
    if self.mask_invalid:
      image = jnp.where(valid, clamped, 0.0)
      keep = jax.lax.reduce_window(valid, True, jax.lax.bitwise_and, (1, 5, 5), (1, 1, 1),
                                   "SAME")
    else:  # NaN where the depth is invalid, as in the authors' arrays
      image, keep = jnp.where(valid, clamped, jnp.nan), real
    strength = EDGE_STRENGTHS[self.strength](sobel_gradients(image))
    return (strength > self.threshold).astype(jnp.int32), keep

  def finalize(self, sums):
    return metrics.finalize_contour_metrics(sums)


TASKS = {"depth": DepthTask, "semantic": SemanticTask, "contours": ContourTask,
         "depth_edges": DepthEdgeTask}


def accumulate_sums(totals: dict | None, sums: dict) -> dict:
  """Adds one batch's grouped sums ({task or region: {name: array}}) to float64 totals."""
  totals = totals or {}
  return {name: metrics.accumulate(totals.get(name), s) for name, s in sums.items()}


def finalize_all(tasks: dict[str, Task], totals: dict) -> dict[str, float]:
  """Summed metric sums of every task -> flat {"<task>/<metric>": value}."""
  out = {}
  for name, task in tasks.items():
    out.update({f"{name}/{k}": v for k, v in task.finalize(totals[name]).items()})
  return out


def build_tasks(task_configs) -> dict[str, Task]:
  """Task objects keyed by name from `config.tasks` (name -> {kind, loss, weight, params})."""
  out = {}
  for name, cfg in task_configs.items():
    kind = cfg.get("kind", name)
    if kind not in TASKS:
      raise ValueError(f"Unknown task {kind!r} (config.tasks.{name}); known tasks: "
                       f"{sorted(TASKS)}.")
    out[name] = TASKS[kind](**dict(cfg.get("params", {})))
  return out
