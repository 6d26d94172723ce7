"""Tasks: how a model output and a batch become loss inputs and metric sums.

A task knows its target (e.g. depth in metres -> clamped, normalised depth) and
its metrics; it does not know the network or which loss is used. The train step
loops over the configured tasks, so adding one (semantics, contours) is a new
class and one registry line.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from smd_jax import metrics


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


TASKS = {"depth": DepthTask}


def build_tasks(task_configs) -> dict[str, Task]:
  """Task objects keyed by name from `config.tasks` (name -> {loss, weight, params})."""
  out = {}
  for name, cfg in task_configs.items():
    if name not in TASKS:
      raise ValueError(f"Unknown task {name!r}; known tasks: {sorted(TASKS)}.")
    out[name] = TASKS[name](**dict(cfg.get("params", {})))
  return out
