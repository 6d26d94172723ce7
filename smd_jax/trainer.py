"""The training loop: one function for every experiment, driven by the config."""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging

from smd_jax import (checkpoints, convert, evaluation, input_pipeline, metrics, parallel,
                     steps as steps_lib, visualize)
from smd_jax.summary import MetricWriter


def num_train_steps(config, train_size: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * (train_size // config.batch_size))


def _finalize_train_metrics(history: list[dict], tasks) -> dict[str, float]:
  """Mean losses and pooled task metrics over the steps since the last report."""
  fetched = [parallel.fetch(h) for h in history]
  out = {k: float(np.mean([h[k] for h in fetched]))
         for k in fetched[0] if k == "loss" or k.startswith("loss_") or k == "grad_norm"}
  out["learning_rate"] = float(fetched[-1]["learning_rate"])
  for name, task in tasks.items():
    sums = None  # float64 host sums; some are arrays (confusion matrices)
    for h in fetched:
      sums = metrics.accumulate(sums, {k.split("/", 1)[1]: v for k, v in h.items()
                                       if k.startswith(f"{name}/")})
    out.update({f"{name}/{k}": v for k, v in task.finalize(sums).items()})
  return out


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), then evaluates.

  Leaves in `workdir`: config.json, checkpoints/, tensorboard/, metrics.jsonl,
  eval_validation_<step>.json and images/.

  Returns:
    The final validation metrics (plus the constant baseline's RMSE).
  """
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh)
  model = steps_lib.create_model(config, config.seed)  # fails fast on bad model names

  sources = input_pipeline.load_data_sources(config.data, workdir)
  if "train" not in sources:
    raise ValueError(f"The data set has no train split (splits: {sorted(sources)}).")
  eval_split = "validation" if "validation" in sources else None
  total_steps = num_train_steps(config, len(sources["train"]))
  write_config(config, workdir)
  writer = MetricWriter(workdir)

  convert.maybe_init_from(model, config, workdir)  # config.init_from, fresh runs only
  steps, state = steps_lib.build_steps(config, model, total_steps, mesh)
  del model
  train_ds = input_pipeline.train_dataset(
      sources["train"], global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch_batches)
  train_iter = iter(train_ds)

  # Evaluated checkpoints store their metrics; the best by config.best_metric is kept.
  ckpt = checkpoints.Checkpointer(
      workdir, max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps,
      best_metric=(config.get("best_metric", None) or "depth/rmse") if eval_split else None)
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(state, train_iter)
  start = int(parallel.fetch(state.step))
  logging.info("Training %d steps (from step %d), global batch %d on %d device(s).",
               total_steps, start, config.batch_size, mesh.devices.size)

  max_depth = config.tasks.depth.params.max_depth
  semantic_input = config.semantic_transform != "none"

  def log_figure(step):  # the figure grid of the first validation examples, to TensorBoard
    panels, grid = evaluation.prediction_figures(
        steps, state, sources[eval_split], num_images=config.num_images,
        batch_size=config.eval_batch_size, mesh=mesh, max_depth=max_depth,
        semantic_input=semantic_input)
    writer.image(step, f"{eval_split}/figure_grid", grid)
    return panels, grid

  history, t_report, step = [], time.time(), start
  for step in range(start + 1, total_steps + 1):
    batch = parallel.to_global(next(train_iter), mesh)
    state, step_metrics = steps.train_step(state, batch)
    history.append(step_metrics)
    if step % config.log_every_steps == 0 or step == total_steps:
      values = _finalize_train_metrics(history, steps.tasks)
      elapsed = time.time() - t_report
      values["steps_per_sec"] = len(history) / elapsed
      writer.scalars(step, values, prefix="train/")
      logging.info("step %d/%d, %.2f steps/s, ETA %.0f s", step, total_steps,
                   values["steps_per_sec"], (total_steps - step) / values["steps_per_sec"])
      history, t_report = [], time.time()
    eval_metrics = None
    if eval_split and config.eval_every_steps > 0 and step % config.eval_every_steps == 0 \
        and step != total_steps:
      eval_metrics = evaluation.evaluate(
          steps, state, sources[eval_split], global_batch_size=config.eval_batch_size,
          mesh=mesh, max_examples=config.max_eval_examples)
      writer.scalars(step, eval_metrics, prefix=f"{eval_split}/")
      log_figure(step)
    if step != total_steps or not eval_split:  # the last step is saved after its evaluation
      ckpt.save(step, state, train_iter, metrics=eval_metrics)
  if not eval_split and ckpt.latest_step() != total_steps:
    ckpt.save(total_steps, state, train_iter, force=True)

  results = {"step": total_steps}
  if eval_split:
    results.update(evaluation.evaluate(
        steps, state, sources[eval_split], global_batch_size=config.eval_batch_size,
        mesh=mesh, max_examples=config.max_eval_examples))
    base_rmse, base_depth = evaluation.constant_baseline(sources[eval_split], max_depth,
                                                         config.max_eval_examples)
    results.update({"constant_baseline/rmse": base_rmse, "constant_baseline/depth": base_depth})
    writer.scalars(total_steps, {k: v for k, v in results.items() if k != "step"},
                   prefix=f"{eval_split}/")
    if ckpt.latest_step() != total_steps:  # with its metrics, for keep-best
      ckpt.save(total_steps, state, train_iter, force=True, metrics=results)
    panels, figure_grid = log_figure(total_steps)
    if jax.process_index() == 0:
      evaluation.write_json(os.path.join(workdir, f"eval_{eval_split}_{total_steps}.json"), results)
      images = os.path.join(workdir, "images")
      evaluation.save_png(os.path.join(images, f"{eval_split}_{total_steps}.png"),
                          visualize.stack_rows(panels))
      evaluation.save_png(os.path.join(images, f"{eval_split}_{total_steps}_grid.png"),
                          figure_grid)
      for i, panel in enumerate(panels):
        evaluation.save_png(os.path.join(images, f"{eval_split}_{total_steps}_{i}.png"), panel)
    logging.info("Final %s RMSE %.4f m; best constant depth (%.2f m) RMSE %.4f m.", eval_split,
                 results["depth/rmse"], base_depth, base_rmse)
  ckpt.close()
  writer.close()
  return results
