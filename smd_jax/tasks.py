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

  def valid(self, batch):
    depth = batch["depth"]
    return jnp.isfinite(depth) & (depth > 0)

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

  def targets(self, batch) -> tuple[jax.Array, jax.Array]:
    raise NotImplementedError

  def loss_inputs(self, output, batch):
    target, valid = self.targets(batch)
    return output, target, valid

  def predict_labels(self, output):
    return jnp.argmax(output, axis=-1).astype(jnp.int32)

  def metric_sums(self, output, batch):
    target, valid = self.targets(batch)
    return metrics.segmentation_metric_sums(output, target, valid)


@dataclasses.dataclass(frozen=True)
class SemanticTask(ClassificationTask):
  """NYU40 semantic segmentation: class = label id - 1; unlabelled (-1) is ignored."""

  num_classes: int = semantics.NUM_NYU40_CLASSES

  def targets(self, batch):
    label = batch["semantic"].astype(jnp.int32)
    return jnp.clip(label - 1, 0, self.num_classes - 1), (label >= 1) & (label <= self.num_classes)

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


def sobel_magnitude(image: jax.Array) -> jax.Array:
  """|grad| of [B,H,W] with OpenCV's 5x5 Sobel kernels -> [B,H,W].

  Borders are mirrored without repeating the edge pixel, as OpenCV's default
  BORDER_REFLECT_101 does, so the image boundary is no edge.
  """
  kx = np.outer(_SOBEL5_SMOOTH, _SOBEL5_DERIV)  # d/dx: along W
  kernels = jnp.asarray(np.stack([kx, kx.T], axis=-1)[:, :, None, :], image.dtype)  # HWIO
  padded = jnp.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")
  grad = jax.lax.conv_general_dilated(padded[..., None], kernels, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sqrt(jnp.sum(grad**2, axis=-1))


@dataclasses.dataclass(frozen=True)
class DepthEdgeTask(ClassificationTask):
  """Two classes: depth discontinuity or not, from the ground-truth depth.

  The reference code's 'Sobel' variant of the 2-head model: a second head predicts
  where the 5x5 Sobel magnitude of the ground-truth depth (metres, clamped to
  `max_depth`) exceeds `threshold` (20: a step of about 0.42 m between neighbours,
  since the kernel's weights on one side sum to 48). Pixels whose 5x5 window
  touches invalid depth are ignored.
  """

  threshold: float = 20.0
  max_depth: float = 15.0

  def targets(self, batch):
    depth = batch["depth"]
    valid = jnp.isfinite(depth) & (depth > 0) & example_mask(batch, depth.shape)
    filled = jnp.where(valid, jnp.clip(depth, 0.0, self.max_depth), 0.0).astype(jnp.float32)
    window_valid = jax.lax.reduce_window(valid, True, jax.lax.bitwise_and, (1, 5, 5),
                                         (1, 1, 1), "SAME")
    edges = (sobel_magnitude(filled) > self.threshold).astype(jnp.int32)
    return edges, window_valid

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
