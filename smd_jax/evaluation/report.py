"""Evaluate a trained workdir on a whole split and write paper-style results.

The library side of `python -m smd_jax.evaluate`. `evaluate_workdir` restores
a checkpoint (`inference.trained_run`), runs `passes.analyse` over the split on all
devices and writes, in the workdir:

  eval_<split>_<step>.json             every metric (task metrics, breakdown, constant baseline)
  eval_<split>_<step>.md               the paper's table (+ its published row) and the breakdown
  eval_<split>_<step>_per_image.csv    per-image depth metrics, worst RMSE first (per_image=True)
  images/eval_<split>_<step>_grid.png  the figure grid of the first examples

`compare` lays several workdirs' results side by side in one table.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, Sequence

import jax
from absl import logging

from smd_jax import metrics, output_files
from smd_jax.data import datasets
from smd_jax.errors import UserError
from smd_jax.evaluation import breakdown, figures, passes, tables
from smd_jax.inference import trained_run


# Columns of the comparison table after the paper's: the boundary claim, then the heads.
COMPARE_COLUMNS = ((f"{breakdown.PREFIX}/{breakdown.NEAR}/rmse", "RMSE near contours"),
                   (f"{breakdown.PREFIX}/{breakdown.OFF}/rmse", "RMSE off contours"),
                   *tables.EXTRA_COLUMNS)


@dataclasses.dataclass
class Report:
  results: dict[str, Any]
  per_image: list[dict[str, Any]]
  paths: dict[str, str]  # what was written: json, markdown, csv, grid
  table: str


def run_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir)) or workdir


def load_split(config, workdir: str, split: str) -> Sequence:
  try:
    sources = datasets.load_data_sources(config.data, workdir)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e).splitlines()[0]) from e
  if split not in sources:
    raise UserError(f"The data set has no {split!r} split (splits: "
                    f"{', '.join(sorted(sources))}).")
  return sources[split]


def markdown(name: str, config, results: dict[str, Any], split: str) -> str:
  """The results file's Markdown: the paper's columns (and row), then the breakdown."""
  title = f"# {name}: {split} split, step {results.get('step')}"
  lines = [title, "", tables.markdown_table({name: results}, {name: config},
                                                  published=split == "validation")]
  if any(k.startswith(breakdown.PREFIX + "/") for k in results):
    lines += ["Depth breakdown: metres of ground truth (last bin includes 15 m), and pixels "
              f"within {breakdown.CONTOUR_RADIUS} px of a semantic contour or not; "
              "`pixels` = share of the valid pixels.", "",
              tables.breakdown_table(results)]
  if results.get("constant_baseline/rmse") is not None:
    lines.append(f"Best constant depth ({results['constant_baseline/depth']:.2f} m): RMSE "
                 f"{results['constant_baseline/rmse']:.3f} m.\n")
  return "\n".join(lines)


def _checked_batch_size(batch_size: int | None, config, mesh) -> int:
  """The global evaluation batch (default `config.eval_batch_size`); UserError unless it is
  a multiple of the device count (and of the process count)."""
  batch_size = int(batch_size or config.eval_batch_size)
  if batch_size % mesh.devices.size or batch_size % jax.process_count():
    raise UserError(f"The batch size {batch_size} is not a multiple of the "
                    f"{mesh.devices.size} devices.")
  return batch_size


def _split_results(loaded: trained_run.Loaded, source: Sequence, split: str,
                   checkpoint: str | int, batch_size: int, max_examples: int | None,
                   progress: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(every metric of the split, with the run's step and the constant-depth baseline;
  per-image depth metrics), over the first `max_examples` examples (None = all)."""
  step_fn = passes.make_analysis_step(loaded.steps, loaded.mesh)
  results, image_rows = passes.analyse(
      step_fn, loaded.state, loaded.steps.tasks, source, global_batch_size=batch_size,
      mesh=loaded.mesh, max_examples=max_examples, progress=progress)
  base_rmse, base_depth = passes.constant_baseline(source, loaded.max_depth, max_examples)
  results = {"step": loaded.step, "split": split, "checkpoint": str(checkpoint),
             "num_examples": len(image_rows), **results,
             "constant_baseline/rmse": base_rmse, "constant_baseline/depth": base_depth}
  return results, image_rows


def _figure_grid(loaded: trained_run.Loaded, source: Sequence, num_images: int,
                 batch_size: int):
  """The figure grid (uint8 [H,W,3]) of the split's first `num_images` examples, or None
  for 0."""
  if num_images <= 0:
    return None
  batch = passes.first_batch(source, num_images, batch_size)
  outputs_fn = passes.make_outputs_fn(loaded.steps, loaded.mesh)
  out = passes.global_outputs(outputs_fn, loaded.state, batch, loaded.mesh)
  head = passes.semantic_head(loaded.steps.tasks)
  return figures.figure(batch, out["depth"], max_depth=loaded.max_depth,
                        semantic_input=loaded.config.semantic_transform != "none",
                        semantic_pred=out[head] if head else None,
                        rows=batch["mask"].nonzero()[0])


def _write_report_files(workdir: str, split: str, step: int, results: dict[str, Any],
                        table: str, image_rows: list[dict[str, Any]] | None, source: Sequence,
                        grid) -> dict[str, str]:
  """Writes the results JSON and Markdown, the per-image CSV (with `image_rows`) and the
  grid PNG (with a `grid`) in `workdir`; returns {kind: path} of what was written."""
  paths = {}
  stem = os.path.join(workdir, f"eval_{split}_{step}")
  paths["json"], paths["markdown"] = stem + ".json", stem + ".md"
  output_files.write_json(paths["json"], results)
  output_files.write_text(paths["markdown"], table)
  if image_rows is not None:
    paths["csv"] = stem + "_per_image.csv"
    write_per_image_csv(paths["csv"], image_rows, source)
  if grid is not None:
    paths["grid"] = os.path.join(workdir, "images", f"eval_{split}_{step}_grid.png")
    output_files.write_png(paths["grid"], grid)
  return paths


def evaluate_workdir(workdir: str, *, config=None, checkpoint: str | int = "latest",
                     split: str = "validation", batch_size: int | None = None,
                     max_examples: int | None = None, per_image: bool = False,
                     num_images: int | None = None, progress: bool = False, mesh=None,
                     write: bool = True) -> Report:
  """Evaluates one checkpoint of `workdir` on `split`; see the module docstring.

  Args:
    config: the run's config; default its `config.json`.
    checkpoint: 'latest', 'best' or a step number.
    batch_size: global evaluation batch (default `config.eval_batch_size`); any
      multiple of the device count, whether it divides the split or not.
    max_examples: only the first examples of the split (default
      `config.max_eval_examples`, None = all).
    num_images: examples in the figure grid (default `config.num_images`; at
      most one batch); 0 = no grid.
  """
  loaded = trained_run.load(workdir, config=config, checkpoint=checkpoint, mesh=mesh)
  config = loaded.config
  batch_size = _checked_batch_size(batch_size, config, loaded.mesh)
  if max_examples is None:
    max_examples = config.get("max_eval_examples", None)
  source = load_split(config, workdir, split)
  results, image_rows = _split_results(loaded, source, split, checkpoint, batch_size,
                                       max_examples, progress)
  num_images = config.get("num_images", 4) if num_images is None else num_images
  grid = _figure_grid(loaded, source, min(int(num_images), batch_size), batch_size)

  name = run_name(workdir)
  table = markdown(name, config, results, split)
  paths = {}
  if write and jax.process_index() == 0:
    paths = _write_report_files(workdir, split, loaded.step, results, table,
                                image_rows if per_image else None, source, grid)
  logging.info("%s %s step %d: RMSE %.4f m over %d examples.", name, split, loaded.step,
               results["depth/rmse"], len(image_rows))
  return Report(results=results, per_image=image_rows, paths=paths, table=table)


def compare(workdirs: Sequence[str], *, split: str = "validation", evaluate_missing: bool = True,
            **evaluate_kwargs) -> str:
  """One Markdown table over several workdirs (their latest `eval_<split>_*.json`).

  A workdir without results for `split` is evaluated first (latest checkpoint)
  when `evaluate_missing`. Each run's config (its config.json) names the paper's
  row shown below it; rows are validation-split numbers, so only shown for it.
  """
  results, configs = {}, {}
  for workdir in workdirs:
    name = os.path.normpath(workdir)
    if name in results:
      raise UserError(f"{workdir} is listed twice.")
    configs[name] = trained_run.load_config(workdir)
    results[name] = final_results(workdir, split)
    if results[name] is None and evaluate_missing:
      logging.info("No %s results in %s: evaluating its latest checkpoint.", split, workdir)
      results[name] = evaluate_workdir(workdir, split=split, **evaluate_kwargs).results
  return tables.markdown_table(results, configs, extra_columns=COMPARE_COLUMNS,
                                    published=split == "validation")


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
  with output_files.atomic_open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
  logging.info("Wrote %s", path)


def final_results(workdir: str, split: str = "validation") -> dict | None:
  """The last `eval_<split>_<step>.json` in a workdir, or None."""
  found = glob.glob(os.path.join(workdir, f"eval_{split}_*.json"))
  if not found:
    return None
  latest = max(found, key=lambda p: int(re.findall(r"(\d+)\.json$", p)[0]))
  with open(latest) as f:
    return json.load(f)
