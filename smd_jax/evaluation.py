"""Evaluation over a whole split: exact pooled metrics, baseline, pictures.

`evaluate` is what training reports (the jitted `eval_step` of every task).
`analyse` is the full evaluation of `python -m smd_jax.evaluate`: the same task
sums plus the depth breakdown (`smd_jax.breakdown`) and per-image depth sums,
from one forward pass per batch. Both pool over every valid pixel of the split:
the last batch is padded with examples that count for nothing (`mask`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from smd_jax import (breakdown, input_pipeline, metrics, parallel, semantics, tasks as tasks_lib,
                     visualize)


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


# --------------------------------------------------------------------------
# Predictions of every head, and the figure grid.


def make_outputs_fn(steps, semantic_transform: str, mesh) -> Callable:
  """Jitted (state, batch) -> predictions of every head, sharded over the batch.

  `depth`: [B,H,W] metres; a `semantic` task: [B,H,W] NYU40 ids (arg-max + 1);
  other classification heads: [B,H,W] class index. The batch needs `image` and
  `semantic` (the model's semantic input, if it takes one).
  """
  def outputs_fn(state, batch):
    net = nnx.merge(steps.eval_graph, state.params, state.model_state, copy=True)
    outputs = net(semantics.model_inputs(batch, semantic_transform))
    out = {}
    for name, task in steps.tasks.items():
      if isinstance(task, tasks_lib.DepthTask):
        out[name] = task.predict_metres(outputs[name])
      elif isinstance(task, tasks_lib.SemanticTask):
        out[name] = task.predict_labels(outputs[name]) + 1  # class c is NYU40 id c + 1
      else:
        out[name] = task.predict_labels(outputs[name])
    return out

  data = parallel.batch_sharding(mesh)
  return jax.jit(outputs_fn, in_shardings=(parallel.replicated(mesh), data), out_shardings=data)


def semantic_head(tasks) -> str | None:
  """Name of the first NYU40 semantic segmentation task, if any."""
  return next((n for n, t in tasks.items() if isinstance(t, tasks_lib.SemanticTask)), None)


# Figure panels are enlarged (pixel repetition) to at least this width, so small
# training crops stay visible and the titles fit.
FIGURE_MIN_PANEL_WIDTH = 128


def figure(batch: dict[str, np.ndarray], depth_pred: np.ndarray, *, max_depth: float,
           semantic_input: bool, semantic_pred: np.ndarray | None = None,
           rows: Sequence[int] | None = None) -> np.ndarray:
  """Figure grid, a row per example: RGB | labels | ground truth | prediction | |error|.

  `labels` is the semantic label map (titled 'semantic in' when the model takes
  it as input). Depth maps share the row's scale (0 to its farthest ground truth,
  as `visualize.depth_panel`; black = invalid). The error map
  |prediction - ground truth| uses one scale for the whole grid, 0 to the 99th
  percentile of the shown errors (in its title; grey = no ground truth). With a
  semantic head, its predicted labels follow. Panels narrower than
  `FIGURE_MIN_PANEL_WIDTH` are enlarged by an integer factor.
  """
  rows = list(range(len(depth_pred))) if rows is None else list(rows)
  gts = [np.clip(batch["depth"][i], 0, max_depth) for i in rows]
  errors = [np.abs(depth_pred[i] - gt) for i, gt in zip(rows, gts)]
  shown = np.concatenate([e[np.isfinite(e)] for e in errors] + [np.zeros(0)])
  err_max = max(float(np.percentile(shown, 99)), 0.01) if shown.size else 1.0
  grid = []
  for i, gt, err in zip(rows, gts, errors):
    valid = np.isfinite(gt)
    vmax = max(min(float(gt[valid].max()), max_depth) if valid.any() else max_depth, 1e-3)
    row = [batch["image"][i], visualize.label_colors(batch["semantic"][i]),
           visualize.turbo(gt / vmax), visualize.turbo(depth_pred[i] / vmax),
           visualize.error_colors(err, err_max)]
    if semantic_pred is not None:
      row.append(visualize.label_colors(semantic_pred[i]))
    grid.append(row)
  titles = ["RGB", "semantic in" if semantic_input else "labels", "GT depth", "predicted",
            f"|err|<{err_max:.2g}m"] + (["pred. labels"] if semantic_pred is not None else [])
  return visualize.figure_grid(grid, titles, min_panel_width=FIGURE_MIN_PANEL_WIDTH)


def first_batch(source: Sequence, num_images: int, batch_size: int) -> dict[str, np.ndarray]:
  """The first `num_images` examples as one (padded) global batch, the same on every process."""
  return next(input_pipeline.eval_batches(source, global_batch_size=batch_size,
                                          max_examples=num_images))


def local_rows(pred: np.ndarray) -> np.ndarray:
  """This process's rows of a gathered global batch (every process's slice in order)."""
  return pred.reshape((jax.process_count(), -1) + pred.shape[1:])[jax.process_index()]


def local_outputs(outputs_fn, state, batch: dict[str, np.ndarray], mesh) -> dict[str, np.ndarray]:
  """`make_outputs_fn` on this process's local batch -> its rows of every prediction."""
  return jax.tree.map(local_rows, parallel.fetch(outputs_fn(state, parallel.to_global(batch,
                                                                                     mesh))))


def global_outputs(outputs_fn, state, batch: dict[str, np.ndarray], mesh) -> Any:
  """`outputs_fn` on a global batch that every process holds -> every row, on every process.

  Each process feeds its contiguous part (the rows its devices hold in the
  global array), so figures show the same examples on any number of hosts.
  """
  n = len(batch["mask"]) // jax.process_count()
  start = jax.process_index() * n
  part = {k: v[start:start + n] for k, v in batch.items()}
  return parallel.fetch(outputs_fn(state, parallel.to_global(part, mesh)))


def prediction_figures(steps, state, source: Sequence, *, num_images: int, batch_size: int,
                       mesh, max_depth: float, semantic_input: bool
                       ) -> tuple[list[np.ndarray], np.ndarray]:
  """Panels (input | ground truth | prediction, `visualize.depth_panel`) of the first
  `num_images` examples, and the figure grid (`figure`) of the same, from one `predict_step`."""
  batch = first_batch(source, num_images, batch_size)
  pred = global_outputs(steps.predict_step, state, batch, mesh)
  keep = batch["mask"].nonzero()[0]
  panels = [visualize.depth_panel(batch["image"][i], np.clip(batch["depth"][i], 0, max_depth),
                                  pred[i], max_depth) for i in keep]
  grid = figure(batch, pred, max_depth=max_depth, semantic_input=semantic_input, rows=keep)
  return panels, grid


# --------------------------------------------------------------------------
# Full evaluation: task metrics, depth breakdown, per-image metrics.


def make_analysis_step(steps, semantic_transform: str, mesh, *,
                       bins=breakdown.DEPTH_BINS, contour_radius: int = breakdown.CONTOUR_RADIUS
                       ) -> Callable:
  """Jitted (state, batch) -> {"tasks": per-task sums (as `eval_step`), "breakdown": per-region
  depth sums, "per_image": depth sums per example [B]}, from one forward pass."""
  depth_task = steps.tasks["depth"]

  def analysis_step(state, batch):
    net = nnx.merge(steps.eval_graph, state.params, state.model_state, copy=True)
    outputs = net(semantics.model_inputs(batch, semantic_transform))
    pred = depth_task.predict_metres(outputs["depth"])
    target, valid = depth_task.target_metres(batch), depth_task.valid(batch)
    return {
        "tasks": {name: task.metric_sums(outputs[name], batch)
                  for name, task in steps.tasks.items()},
        "breakdown": breakdown.breakdown_sums(pred, target, valid, batch["semantic"], bins=bins,
                                              contour_radius=contour_radius),
        "per_image": jax.vmap(metrics.depth_metric_sums)(pred, target, valid),
    }

  rep = parallel.replicated(mesh)
  return jax.jit(analysis_step, in_shardings=(rep, parallel.batch_sharding(mesh)),
                 out_shardings={"tasks": rep, "breakdown": rep,
                                "per_image": parallel.batch_sharding(mesh)})


def _batch_indices(n: int, batch: int, process_count: int) -> list[np.ndarray]:
  """Example index of every global row of each batch `eval_batches` yields (-1 = padding).

  Process p holds examples p, p + P, ... and contributes rows p*b .. p*b + b - 1
  of each global batch (b = local batch size).
  """
  shards = [np.arange(n)[p::process_count] for p in range(process_count)]
  per_process = -(-n // process_count)
  out = []
  for start in range(0, per_process, batch):
    rows = np.full(batch * process_count, -1, np.int64)
    for p, shard in enumerate(shards):
      chunk = shard[start:start + batch]
      rows[p * batch:p * batch + len(chunk)] = chunk
    out.append(rows)
  return out


def analyse(analysis_step, state, tasks, source: Sequence, *, global_batch_size: int, mesh,
            max_examples: int | None = None, progress: bool = False
            ) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Runs `make_analysis_step` over `source`: (pooled metrics, per-image metric rows).

  Metrics: every task's (as `evaluate`) and `breakdown/<region>/<metric>`.
  Per-image rows, in split order: `index`, `valid_pixels` and the depth metrics
  of that example alone.
  """
  n = len(source) if max_examples is None else min(len(source), max_examples)
  local = input_pipeline.local_batch_size(global_batch_size, jax.process_count())
  indices = _batch_indices(n, local, jax.process_count())
  batches = input_pipeline.eval_batches(
      source, global_batch_size=global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=max_examples)
  if progress and jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    batches = tqdm(batches, total=len(indices), unit="batch", desc="evaluate")
  totals = {name: None for name in tasks}
  region_totals = None
  per_image = {}
  for rows, batch in zip(indices, batches):
    out = analysis_step(state, parallel.to_global(batch, mesh))
    for name in totals:
      totals[name] = metrics.accumulate(totals[name], out["tasks"][name])
    sums = out["breakdown"]
    region_totals = ({r: metrics.accumulate(None, s) for r, s in sums.items()}
                     if region_totals is None else
                     {r: metrics.accumulate(region_totals[r], s) for r, s in sums.items()})
    image_sums = parallel.fetch(out["per_image"])
    for row, index in enumerate(rows):
      if index >= 0:
        per_image[int(index)] = {k: float(v[row]) for k, v in image_sums.items()}
  results = {}
  for name, task in tasks.items():
    results.update({f"{name}/{k}": v for k, v in task.finalize(totals[name]).items()})
  results.update(breakdown.finalize_breakdown(region_totals))
  image_rows = [{"index": i, "valid_pixels": int(s["count"]),
                 **metrics.finalize_depth_metrics(s)} for i, s in sorted(per_image.items())]
  return results, image_rows


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def write_per_image_csv(path: str, rows: list[dict[str, Any]], source: Sequence | None = None
                        ) -> None:
  """Per-image metrics as CSV, worst RMSE first (examples without valid pixels last).

  With `source`, the frame's `scene`, `camera` and `frame` ids are added where
  the examples have them.
  """
  rows = [dict(r) for r in rows]
  id_keys = []
  if source is not None and rows:
    id_keys = [k for k in ("scene", "camera", "frame") if k in source[rows[0]["index"]]]
    for r in rows:
      example = source[r["index"]]
      r.update({k: _text(example[k]) for k in id_keys})
  rank = lambda r: (not math.isfinite(r["rmse"]), -r["rmse"] if math.isfinite(r["rmse"]) else 0)
  rows.sort(key=rank)
  columns = (["index"] + id_keys + ["valid_pixels"] + list(metrics.DEPTH_METRIC_NAMES))
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
  os.replace(tmp, path)
  logging.info("Wrote %s", path)
