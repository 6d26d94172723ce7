"""Evaluation over a whole split: exact pooled metrics, baseline, pictures."""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image

from smd_jax import input_pipeline, metrics, parallel, visualize


def evaluate(steps, state, source: Sequence, *, global_batch_size: int, mesh,
             max_examples: int | None = None) -> dict[str, float]:
  """Metrics of every task over `source`, pooled over all valid pixels.

  Per-batch sums come back from the jitted `eval_step` already summed over
  devices (and hosts); the host adds them up in float64.
  """
  totals = {name: None for name in steps.tasks}
  for batch in input_pipeline.eval_batches(
      source, global_batch_size=global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=max_examples):
    # `mask` stays in: tasks with targets everywhere (contours) need it to skip padding.
    sums = steps.eval_step(state, parallel.to_global(batch, mesh))
    for name in totals:
      totals[name] = metrics.accumulate(totals[name], sums[name])
  out = {}
  for name, task in steps.tasks.items():
    out.update({f"{name}/{k}": v for k, v in task.finalize(totals[name]).items()})
  return out


def constant_baseline(source: Sequence, max_depth: float,
                      max_examples: int | None = None) -> tuple[float, float]:
  """RMSE (metres) of the best constant depth on `source` (clamped as in training), and that constant."""
  total = {"count": 0.0, "sum": 0.0, "sum_sq": 0.0}
  n = len(source) if max_examples is None else min(len(source), max_examples)
  for i in range(n):
    depth = np.asarray(source[i]["depth"], np.float32)
    sums = metrics.constant_baseline_sums(np.clip(depth, 0, max_depth), np.isfinite(depth))
    total = {k: total[k] + sums[k] for k in total}
  return metrics.constant_baseline_rmse(total)


def prediction_panels(steps, state, source: Sequence, *, num_images: int, batch_size: int,
                      mesh, max_depth: float) -> list[np.ndarray]:
  """Input | ground truth | prediction panels for the first `num_images` examples."""
  batch = next(input_pipeline.eval_batches(
      source, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=num_images))
  mask = batch["mask"]
  pred = parallel.fetch(steps.predict_step(state, parallel.to_global(batch, mesh)))
  # With several processes the gathered prediction holds every process's slice;
  # draw this process's own examples from its local rows.
  local = pred.reshape((jax.process_count(), -1) + pred.shape[1:])[jax.process_index()]
  keep = mask.nonzero()[0]
  return [visualize.depth_panel(batch["image"][i], np.clip(batch["depth"][i], 0, max_depth),
                                local[i], max_depth) for i in keep]


def save_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


def write_json(path: str, values: dict) -> None:
  """JSON without NaN (not valid JSON): NaN/inf become null."""
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in values.items()}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(clean, f, indent=2, sort_keys=True)
  os.replace(tmp, path)  # never a half-written results file
  logging.info("Wrote %s", path)
