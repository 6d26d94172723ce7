"""Evaluation passes over a whole split: exact pooled metrics, predictions, baseline.

`evaluate` is what training reports (the jitted `eval_step` of every task).
`analyse` is the full evaluation of `python -m smd_jax.evaluate`: the same task
sums plus the depth breakdown (`evaluation.breakdown`) and per-image depth sums,
from one forward pass per batch. Both pool over every valid pixel of the split:
the last batch is padded with examples that count for nothing (`mask`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from smd_jax import metrics, tasks as tasks_lib
from smd_jax.data import batching
from smd_jax.evaluation import breakdown
from smd_jax.training import data_parallel, steps as steps_lib


def evaluate(steps, state, source: Sequence, *, global_batch_size: int, mesh,
             max_examples: int | None = None) -> dict[str, float]:
  """Metrics of every task over `source`, pooled over all valid pixels.

  Per-batch sums come back from the jitted `eval_step` already summed over
  devices (and hosts); the host adds them up in float64.
  """
  totals = None
  for batch in batching.eval_batches(
      source, global_batch_size=global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=max_examples):
    # `mask` stays in: tasks with targets everywhere (contours) need it to skip padding.
    totals = tasks_lib.accumulate_sums(
        totals, steps.eval_step(state, data_parallel.to_global(batch, mesh)))
  return tasks_lib.finalize_all(steps.tasks, totals)


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


def make_outputs_fn(steps, mesh) -> Callable:
  """Jitted (state, batch) -> predictions of every head, sharded over the batch.

  `depth`: [B,H,W] metres; a `semantic` task: [B,H,W] NYU40 ids (arg-max + 1);
  other classification heads: [B,H,W] class index. The batch needs `image` and
  `semantic` (the model's semantic input, if it takes one).
  """
  def outputs_fn(state, batch):
    outputs = steps.forward(state, batch)
    out = {}
    for name, task in steps.tasks.items():
      if isinstance(task, tasks_lib.DepthTask):
        out[name] = task.predict_metres(outputs[name])
      elif isinstance(task, tasks_lib.SemanticTask):
        out[name] = task.predict_labels(outputs[name]) + 1  # class c is NYU40 id c + 1
      else:
        out[name] = task.predict_labels(outputs[name])
    return out

  return steps_lib.ForwardStep(outputs_fn, mesh,
                               out_shardings=data_parallel.batch_sharding(mesh))


def semantic_head(tasks) -> str | None:
  """Name of the first NYU40 semantic segmentation task, if any."""
  return next((n for n, t in tasks.items() if isinstance(t, tasks_lib.SemanticTask)), None)


def first_batch(source: Sequence, num_images: int, batch_size: int) -> dict[str, np.ndarray]:
  """The first `num_images` examples as one (padded) global batch, the same on every process."""
  return next(batching.eval_batches(source, global_batch_size=batch_size,
                                          max_examples=num_images))


def local_rows(pred: np.ndarray) -> np.ndarray:
  """This process's rows of a gathered global batch (every process's slice in order)."""
  return pred.reshape((jax.process_count(), -1) + pred.shape[1:])[jax.process_index()]


def local_outputs(outputs_fn, state, batch: dict[str, np.ndarray], mesh) -> dict[str, np.ndarray]:
  """`make_outputs_fn` on this process's local batch -> its rows of every prediction."""
  return jax.tree.map(local_rows, data_parallel.fetch(outputs_fn(state, data_parallel.to_global(batch,
                                                                                     mesh))))


def global_outputs(outputs_fn, state, batch: dict[str, np.ndarray], mesh) -> Any:
  """`outputs_fn` on a global batch that every process holds -> every row, on every process.

  Each process feeds its contiguous part (the rows its devices hold in the
  global array), so figures show the same examples on any number of hosts.
  """
  n = len(batch["mask"]) // jax.process_count()
  start = jax.process_index() * n
  part = {k: v[start:start + n] for k, v in batch.items()}
  return data_parallel.fetch(outputs_fn(state, data_parallel.to_global(part, mesh)))


def make_analysis_step(steps, mesh, *,
                       bins=breakdown.DEPTH_BINS, contour_radius: int = breakdown.CONTOUR_RADIUS
                       ) -> Callable:
  """Jitted (state, batch) -> {"tasks": per-task sums (as `eval_step`), "breakdown": per-region
  depth sums, "per_image": depth sums per example [B]}, from one forward pass."""
  depth_task = steps.tasks["depth"]

  def analysis_step(state, batch):
    outputs = steps.forward(state, batch)
    pred = depth_task.predict_metres(outputs["depth"])
    target, valid = depth_task.target_metres(batch), depth_task.valid(batch)
    return {
        "tasks": {name: task.metric_sums(outputs[name], batch)
                  for name, task in steps.tasks.items()},
        "breakdown": breakdown.breakdown_sums(pred, target, valid, batch["semantic"], bins=bins,
                                              contour_radius=contour_radius),
        "per_image": jax.vmap(metrics.depth_metric_sums)(pred, target, valid),
    }

  rep = data_parallel.replicated(mesh)
  return steps_lib.ForwardStep(
      analysis_step, mesh, out_shardings={"tasks": rep, "breakdown": rep,
                                          "per_image": data_parallel.batch_sharding(mesh)})


def analyse(analysis_step, state, tasks, source: Sequence, *, global_batch_size: int, mesh,
            max_examples: int | None = None, progress: bool = False
            ) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Runs `make_analysis_step` over `source`: (pooled metrics, per-image metric rows).

  Metrics: every task's (as `evaluate`) and `breakdown/<region>/<metric>`.
  Per-image rows, in split order: `index`, `valid_pixels` and the depth metrics
  of that example alone.
  """
  n = len(source) if max_examples is None else min(len(source), max_examples)
  indices = batching.eval_batch_rows(n, global_batch_size, jax.process_count())
  batches = batching.eval_batches(
      source, global_batch_size=global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=max_examples)
  if progress and jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    batches = tqdm(batches, total=len(indices), unit="batch", desc="evaluate")
  totals, region_totals = None, None
  per_image = {}
  for rows, batch in zip(indices, batches):
    out = analysis_step(state, data_parallel.to_global(batch, mesh))
    totals = tasks_lib.accumulate_sums(totals, out["tasks"])
    region_totals = tasks_lib.accumulate_sums(region_totals, out["breakdown"])
    image_sums = data_parallel.fetch(out["per_image"])
    for row, index in enumerate(rows):
      if index >= 0:
        per_image[int(index)] = {k: float(v[row]) for k, v in image_sums.items()}
  results = tasks_lib.finalize_all(tasks, totals)
  results.update(breakdown.finalize_breakdown(region_totals))
  image_rows = [{"index": i, "valid_pixels": int(s["count"]),
                 **metrics.finalize_depth_metrics(s)} for i, s in sorted(per_image.items())]
  return results, image_rows
