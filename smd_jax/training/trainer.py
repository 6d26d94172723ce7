"""The training loop: one function for every experiment, driven by the config."""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from smd_jax import convert, output_files, tasks as tasks_lib
from smd_jax.data import batching, datasets
from smd_jax.errors import UserError
from smd_jax.evaluation import figures, passes
from smd_jax.inference import trained_run
from smd_jax.training import checkpoints, data_parallel, multihost, steps as steps_lib
from smd_jax.training.metric_writer import MetricWriter


def num_train_steps(config, train_size: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * (train_size // config.batch_size))


def _finalize_train_metrics(history: list[dict], tasks) -> dict[str, float]:
  """Mean losses and pooled task metrics over the steps since the last report.

  Steps whose update was skipped (non-finite loss or gradient) are counted in
  `nonfinite_steps` and left out of the means.
  """
  fetched = [data_parallel.fetch(h) for h in history]
  good = [h for h in fetched if not h["nonfinite"]] or fetched
  out = {k: float(np.mean([h[k] for h in good]))
         for k in good[0] if k == "loss" or k.startswith("loss_") or k == "grad_norm"}
  out["nonfinite_steps"] = float(sum(bool(h["nonfinite"]) for h in fetched))
  out["learning_rate"] = float(fetched[-1]["learning_rate"])
  totals = None  # float64 host sums; some are arrays (confusion matrices)
  for h in good:
    totals = tasks_lib.accumulate_sums(totals, {
        name: {k.split("/", 1)[1]: v for k, v in h.items() if k.startswith(f"{name}/")}
        for name in tasks})
  out.update(tasks_lib.finalize_all(tasks, totals))
  return out


class NonFiniteGuard:
  """Counts steps whose update was skipped; stops the run after too many in a row."""

  def __init__(self, max_in_a_row: int, checkpoint_dir: str):
    self.max_in_a_row = max_in_a_row
    self.checkpoint_dir = checkpoint_dir
    self.in_a_row = 0
    self.total = 0

  def check(self, step: int, step_metrics, last_checkpoint: int | None) -> None:
    if not bool(data_parallel.fetch(step_metrics["nonfinite"])):
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    logging.warning("Step %d: non-finite loss or gradient; update skipped (%d in a row).",
                    step, self.in_a_row)
    if self.in_a_row >= self.max_in_a_row:
      where = (f"the last checkpoint is step {last_checkpoint} in {self.checkpoint_dir}"
               if last_checkpoint is not None else "there is no checkpoint yet")
      raise UserError(
          f"Stopped at step {step}: the loss or gradients were non-finite for {self.in_a_row} "
          f"steps in a row ({self.total} in all), so their updates were skipped; {where}. "
          "Lower --config.optimizer.learning_rate (or add warm-up) or check the data, then "
          "run again in the same workdir to resume from that checkpoint.")


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    output_files.write_text(os.path.join(workdir, "config.json"),
                            config.to_json_best_effort(indent=2, sort_keys=True))


def build_model(config):
  """The config's model; a UserError names a bad model, transform or head setting."""
  try:
    return steps_lib.create_model(config, config.seed)
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"Cannot build the model of this config: {str(e).splitlines()[0]}") from e


def load_data(config, workdir: str) -> dict:
  """The data set's splits; built by process 0 (if needed) while the others wait."""
  sources, error = None, None
  if jax.process_index() == 0:
    try:
      sources = datasets.load_data_sources(config.data, workdir)
    except UserError as e:
      error = e
  if jax.process_count() > 1:  # a collective: every process waits for process 0 here
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if error is None and not ok:
      raise UserError("Process 0 could not prepare the data set; its log says why.")
  if error is not None:
    raise error
  if sources is None:  # each host opens what process 0 built (a shared data_dir)
    sources = datasets.load_data_sources(config.data, workdir, build=False)
  if not len(sources.get("train", ())):
    raise UserError(f"The data set has no training examples (splits: "
                    f"{ {k: len(v) for k, v in sources.items()} }); check the raw frames "
                    "(--config.data.manual_dir) and the build log's skip counts.")
  return sources


def check_checkpoint_fits(workdir: str, state) -> None:
  """UserError if the workdir's latest checkpoint was written by another model."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is not None:
      trained_run.check_matches(ckpt, step, state, "the given config",
                            parts=("params", "model_state", "opt_state"))
  except trained_run.UserError as e:
    raise UserError(f"{e} Use a new --workdir, or train with the config this workdir was "
                    f"written with ({os.path.join(workdir, 'config.json')}).") from e
  finally:
    ckpt.close()


def write_final_outputs(workdir: str, split: str, step: int, results, panels, grid) -> None:
  """eval_<split>_<step>.json and the pictures of the final evaluation (process 0 only)."""
  if jax.process_index() != 0:
    return
  output_files.write_json(os.path.join(workdir, f"eval_{split}_{step}.json"), results)
  images = os.path.join(workdir, "images")
  output_files.write_png(os.path.join(images, f"{split}_{step}.png"), figures.stack_rows(panels))
  output_files.write_png(os.path.join(images, f"{split}_{step}_grid.png"), grid)
  for i, panel in enumerate(panels):
    output_files.write_png(os.path.join(images, f"{split}_{step}_{i}.png"), panel)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), then evaluates.

  Leaves in `workdir`: config.json, checkpoints/, tensorboard/, metrics.jsonl,
  eval_validation_<step>.json and images/. Everything that can be wrong with the
  input (model names, data, a checkpoint of another model, batch sizes) raises
  `UserError` before anything in the workdir is written.

  On SIGTERM (or a JAX preemption notice on a multi-host run) the state is saved
  at the next step boundary and the function returns {"step": k, "preempted": 1}.

  Returns:
    The final validation metrics (plus the constant baseline's RMSE).
  """
  mesh = data_parallel.make_mesh()
  for name in ("batch_size", "eval_batch_size"):
    try:
      data_parallel.check_batch_size(config[name], mesh)
    except ValueError as e:
      raise UserError(str(e).replace("batch_size=", f"{name}=")) from e
  model = build_model(config)
  sources = load_data(config, workdir)
  eval_split = "validation" if "validation" in sources else None
  total_steps = num_train_steps(config, len(sources["train"]))
  convert.maybe_init_from(model, config, workdir)  # config.init_from, fresh runs only
  steps, state = steps_lib.build_steps(config, model, total_steps, mesh)
  del model
  check_checkpoint_fits(workdir, state)

  write_config(config, workdir)
  writer = MetricWriter(workdir)
  train_ds = batching.train_dataset(
      sources["train"], global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch_batches,
      num_workers=config.data.get("num_workers", 0))
  train_iter = iter(train_ds)

  # Evaluated checkpoints store their metrics; the best by config.best_metric is kept.
  ckpt = checkpoints.Checkpointer(
      workdir, max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps,
      best_metric=checkpoints.best_metric(config) if eval_split else None)
  try:  # whatever happens, pending async saves complete and the logs are closed
    if ckpt.latest_step() is not None:
      state, _ = ckpt.restore(state, train_iter)
    start = int(data_parallel.fetch(state.step))
    logging.info("Training %d steps (from step %d), global batch %d on %d device(s) in %d "
                 "process(es).", total_steps, start, config.batch_size, mesh.devices.size,
                 jax.process_count())

    max_depth = config.tasks.depth.params.max_depth
    semantic_input = config.semantic_transform != "none"

    def log_figure(step):  # the figure grid of the first validation examples, to TensorBoard
      panels, grid = figures.prediction_figures(
          steps, state, sources[eval_split], num_images=config.num_images,
          batch_size=config.eval_batch_size, mesh=mesh, max_depth=max_depth,
          semantic_input=semantic_input)
      writer.image(step, f"{eval_split}/figure_grid", grid)
      return panels, grid

    guard = NonFiniteGuard(config.get("max_nonfinite_steps", 5), ckpt.directory)
    history, t_report, previous = [], time.time(), None
    with multihost.PreemptionWatch() as preemption:
      for step in range(start + 1, total_steps + 1):
        batch = data_parallel.to_global(next(train_iter), mesh)
        state, step_metrics = steps.train_step(state, batch)
        if previous is not None:  # the step before: done by now, this one is in flight
          guard.check(*previous, ckpt.latest_step())
        previous = (step, step_metrics)
        history.append(step_metrics)
        if step % config.log_every_steps == 0 or step == total_steps:
          values = _finalize_train_metrics(history, steps.tasks)
          elapsed = time.time() - t_report
          values["steps_per_sec"] = len(history) / elapsed
          writer.scalars(step, values, prefix="train/")
          logging.info("step %d/%d, %.2f steps/s, ETA %.0f s", step, total_steps,
                       values["steps_per_sec"], (total_steps - step) / values["steps_per_sec"])
          history, t_report = [], time.time()
        if preemption.should_stop(step):
          guard.check(*previous, ckpt.latest_step())
          if ckpt.latest_step() != step:
            ckpt.save(step, state, train_iter, force=True)
          ckpt.wait()
          logging.warning("Preempted: saved step %d to %s; run the same command to resume.",
                          step, ckpt.directory)
          return {"step": step, "preempted": 1}
        eval_metrics = None
        if eval_split and config.eval_every_steps > 0 and step % config.eval_every_steps == 0 \
            and step != total_steps:
          eval_metrics = passes.evaluate(
              steps, state, sources[eval_split], global_batch_size=config.eval_batch_size,
              mesh=mesh, max_examples=config.max_eval_examples)
          writer.scalars(step, eval_metrics, prefix=f"{eval_split}/")
          log_figure(step)
        if step != total_steps or not eval_split:  # the last step is saved after its evaluation
          ckpt.save(step, state, train_iter, metrics=eval_metrics)
    if previous is not None:
      guard.check(*previous, ckpt.latest_step())
    if not eval_split and ckpt.latest_step() != total_steps:
      ckpt.save(total_steps, state, train_iter, force=True)

    results = {"step": total_steps}
    if eval_split:
      results.update(passes.evaluate(
          steps, state, sources[eval_split], global_batch_size=config.eval_batch_size,
          mesh=mesh, max_examples=config.max_eval_examples))
      base_rmse, base_depth = passes.constant_baseline(sources[eval_split], max_depth,
                                                           config.max_eval_examples)
      results.update({"constant_baseline/rmse": base_rmse, "constant_baseline/depth": base_depth})
      writer.scalars(total_steps, {k: v for k, v in results.items() if k != "step"},
                     prefix=f"{eval_split}/")
      if ckpt.latest_step() != total_steps:  # with its metrics, for keep-best
        ckpt.save(total_steps, state, train_iter, force=True, metrics=results)
      write_final_outputs(workdir, eval_split, total_steps, results, *log_figure(total_steps))
      logging.info("Final %s RMSE %.4f m; best constant depth (%.2f m) RMSE %.4f m.", eval_split,
                   results["depth/rmse"], base_depth, base_rmse)
    return results
  finally:
    ckpt.close()
    writer.close()
