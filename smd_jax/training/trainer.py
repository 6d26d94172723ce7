"""The training loop: one function for every experiment, driven by the config."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from smd_jax import convert, env_flags, output_files, tasks as tasks_lib
from smd_jax.data import batching, datasets, shards
from smd_jax.errors import UserError
from smd_jax.evaluation import figures, passes
from smd_jax.inference import trained_run
from smd_jax.training import (checkpoints, data_parallel, multihost, steps as steps_lib,
                              workdir_lock)
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


def _open_data(config, workdir: str, *, build: bool) -> dict:
  """This host's splits, checked shard by shard (`shards.check_shards`)."""
  sources = datasets.load_data_sources(config.data, workdir, build=build)
  paths = datasets.resolve_paths(config.data, workdir)
  shards.check_shards(sources, datasets.array_source, shards.rebuild_command(paths, config.data))
  return sources


def load_data(config, workdir: str) -> dict:
  """The data set's splits, present and readable on every host.

  Process 0 builds a missing data set first while the others wait; then every
  other process opens it. A host that does not see it (no shared file system)
  builds it locally: the same builder and config give the same data set. What
  fails anywhere is reported on every host in one line.
  """
  error = None
  sources = None
  if jax.process_index() == 0:
    try:
      sources = _open_data(config, workdir, build=True)
    except UserError as e:
      error = e
  if not multihost.from_process_0(error is None):  # a collective: the others wait for process 0
    raise error or UserError("Process 0 could not prepare the data set; its log says why.")
  if sources is None:  # process > 0
    try:
      try:
        sources = _open_data(config, workdir, build=False)
      except UserError as e:
        logging.warning("Process %d: %s Building the data set on this host (docs/scaling.md, "
                        "hosts without a shared file system).", jax.process_index(), e)
        sources = _open_data(config, workdir, build=True)
    except UserError as e:
      error = e
  if not multihost.all_agree(error is None):
    raise error or UserError("Another process could not open the data set (its log says "
                             "why); each host needs it at the same path (docs/scaling.md).")
  if not len(sources.get("train", ())):
    raise UserError(f"The data set has no training examples (splits: "
                    f"{ {k: len(v) for k, v in sources.items()} }); check the raw frames "
                    "(--config.data.manual_dir) and the build log's skip counts.")
  return sources


def restore_newest_intact(workdir: str, state, train_iter):
  """`state` and `train_iter` from the workdir's newest checkpoint that restores.

  Returns (state, damaged): `state` unchanged when there is no checkpoint, and
  (step, reason) for every newer checkpoint that did not restore. Raises
  UserError when the checkpoints belong to another model (nothing is changed)
  or none of them restores. Reads only; `set_aside_damaged` moves damaged ones.
  """
  # Process 0's view, decided before any process can get on to create the folder (the
  # broadcast is a collective): else a slower process would see the folder the writing
  # Checkpointer of a faster one just made and step into Orbax's collectives out of turn.
  if not multihost.from_process_0(os.path.isdir(os.path.join(workdir, "checkpoints"))):
    return state, []
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    if not ckpt.all_steps():
      return state, []

    def check(step):
      try:
        trained_run.check_matches(ckpt, step, state, "the given config",
                                  parts=("params", "model_state", "opt_state"))
      except UserError as e:
        raise UserError(f"{e} Use a new --workdir, or train with the config this workdir was "
                        f"written with ({os.path.join(workdir, 'config.json')}).") from e

    try:
      state, step, damaged = ckpt.restore_newest_intact(state, train_iter, check=check,
                                                        agree=multihost.all_agree)
    except checkpoints.NoIntactCheckpoint as e:
      raise UserError(
          f"No checkpoint in {ckpt.directory} restores ({e}): they are damaged or were written "
          "by another config. Move them out of the way (or use a new --workdir) to train from "
          "the start.") from e
    if damaged:
      logging.info("Resuming from step %d, the newest checkpoint that restores.", step)
    return state, damaged
  finally:
    ckpt.close()


def set_aside_damaged(ckpt: checkpoints.Checkpointer, damaged, resumed_step: int) -> None:
  """Renames each damaged checkpoint to `<step>.damaged` (process 0) and says so in one line.

  Left in place, Orbax would count it as the latest step and refuse to save
  that step again; renamed, it is kept for inspection and never read.
  """
  for step, reason in damaged:
    where = os.path.join(ckpt.directory, f"{step}.damaged")
    if jax.process_index() == 0:
      where = ckpt.set_aside(step, reason)
    logging.warning("Skipped checkpoint %d, which does not restore (%s); resumed from step %d. "
                    "It is kept as %s.", step, reason, resumed_step, where)
  if damaged and jax.process_count() > 1:
    multihost_utils.sync_global_devices("smd_jax: damaged checkpoints set aside")
    ckpt.reload()


@contextlib.contextmanager
def workdir_held(workdir: str):
  """Holds the workdir's lock (`workdir_lock`) on process 0 while the block runs.

  Every process raises the same one-line UserError if another run holds it.
  """
  lock = workdir_lock.WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except UserError as e:
      error = e
  try:
    if not multihost.from_process_0(error is None):
      raise error or UserError("Process 0 found the workdir in use by another training run; "
                               "its log names it.")
    yield
  finally:
    lock.release()


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


def check_batch_sizes(config, mesh) -> None:
  for name in ("batch_size", "eval_batch_size"):
    try:
      data_parallel.check_batch_size(config[name], mesh)
    except ValueError as e:
      raise UserError(str(e).replace("batch_size=", f"{name}=")) from e


def train_iterator(config, train_source):
  """The checkpointable iterator over this process's training batches."""
  return iter(batching.train_dataset(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch_batches,
      num_workers=config.data.get("num_workers", 0),
      worker_timeout_s=config.data.get("worker_timeout_s", None)))


@dataclasses.dataclass
class _Run:
  """What the training loop and the evaluations of one run share."""

  config: Any
  workdir: str
  mesh: Any
  steps: steps_lib.Steps
  state: Any
  sources: dict
  total_steps: int
  train_iter: Any
  ckpt: checkpoints.Checkpointer
  writer: MetricWriter

  @property
  def eval_split(self) -> str | None:
    return "validation" if "validation" in self.sources else None

  def evaluate(self) -> dict[str, float]:
    return passes.evaluate(
        self.steps, self.state, self.sources[self.eval_split],
        global_batch_size=self.config.eval_batch_size, mesh=self.mesh,
        max_examples=self.config.max_eval_examples)

  def log_figure(self, step: int):
    """The figure grid of the first validation examples, to TensorBoard; (panels, grid)."""
    panels, grid = figures.prediction_figures(
        self.steps, self.state, self.sources[self.eval_split], num_images=self.config.num_images,
        batch_size=self.config.eval_batch_size, mesh=self.mesh,
        max_depth=self.config.tasks.depth.params.max_depth,
        semantic_input=self.config.semantic_transform != "none")
    self.writer.image(step, f"{self.eval_split}/figure_grid", grid)
    return panels, grid


def train_steps(run: _Run, start: int) -> int | None:
  """Trains from step `start + 1` to the last, saving every K steps (the last one too).

  Returns the step at which a preemption stopped the run (saved), else None.
  """
  config, ckpt, total_steps = run.config, run.ckpt, run.total_steps
  guard = NonFiniteGuard(config.get("max_nonfinite_steps", 5), ckpt.directory)
  history, t_report, previous = [], time.time(), None
  with multihost.PreemptionWatch() as preemption:
    for step in range(start + 1, total_steps + 1):
      batch = data_parallel.to_global(next(run.train_iter), run.mesh)
      run.state, step_metrics = run.steps.train_step(run.state, batch)
      if previous is not None:  # the step before: done by now, this one is in flight
        guard.check(*previous, ckpt.latest_step())
      previous = (step, step_metrics)
      history.append(step_metrics)
      if step % config.log_every_steps == 0 or step == total_steps:
        values = _finalize_train_metrics(history, run.steps.tasks)
        values["steps_per_sec"] = len(history) / (time.time() - t_report)
        run.writer.scalars(step, values, prefix="train/")
        logging.info("step %d/%d, %.2f steps/s, ETA %.0f s", step, total_steps,
                     values["steps_per_sec"], (total_steps - step) / values["steps_per_sec"])
        history, t_report = [], time.time()
      if preemption.should_stop(step):
        guard.check(*previous, ckpt.latest_step())
        if ckpt.latest_step() != step:
          ckpt.save(step, run.state, run.train_iter, force=True)
        ckpt.wait()
        logging.warning("Preempted: saved step %d to %s; run the same command to resume.",
                        step, ckpt.directory)
        return step
      eval_metrics = None
      if run.eval_split and config.eval_every_steps > 0 \
          and step % config.eval_every_steps == 0 and step != total_steps:
        eval_metrics = run.evaluate()
        run.writer.scalars(step, eval_metrics, prefix=f"{run.eval_split}/")
        run.log_figure(step)
      ckpt.save(step, run.state, run.train_iter, metrics=eval_metrics)
  if previous is not None:
    guard.check(*previous, ckpt.latest_step())
  return None


def final_evaluation(run: _Run) -> dict[str, float]:
  """Saves the last step, then evaluates it; its metrics join its checkpoint (keep-best).

  The save comes first and is waited for, so that a crash or preemption during
  the (long) evaluation loses no training step; rerunning the command then
  only evaluates.
  """
  ckpt, total_steps, split = run.ckpt, run.total_steps, run.eval_split
  if ckpt.latest_step() != total_steps:
    ckpt.save(total_steps, run.state, run.train_iter, force=True)
  ckpt.wait()
  results = {"step": total_steps}
  if not split:
    return results
  results.update(run.evaluate())
  max_depth = run.config.tasks.depth.params.max_depth
  base_rmse, base_depth = passes.constant_baseline(run.sources[split], max_depth,
                                                   run.config.max_eval_examples)
  results.update({"constant_baseline/rmse": base_rmse, "constant_baseline/depth": base_depth})
  run.writer.scalars(total_steps, {k: v for k, v in results.items() if k != "step"},
                     prefix=f"{split}/")
  ckpt.attach_metrics(total_steps, results)
  write_final_outputs(run.workdir, split, total_steps, results, *run.log_figure(total_steps))
  logging.info("Final %s RMSE %.4f m; best constant depth (%.2f m) RMSE %.4f m.", split,
               results["depth/rmse"], base_depth, base_rmse)
  return results


# Compiling ahead pays only with cores to spare: the generator runs up to 4 processes
# and XLA's compiler 2 threads. On 2 cores (2026-12-04, demo at 150 steps, load 7-10)
# the first step came ~150 s later with it than without, so by default it is on only
# above 4 cores; SMD_COMPILE_AHEAD=1 / 0 turns it on / off anywhere.
COMPILE_AHEAD_MIN_CORES = 5


def compiles_ahead(config, workdir: str) -> bool:
  """Whether the steps compile while the data are made (`steps.CompileAhead`).

  For a fresh run on procedural data (generating and building them takes about as
  long as compiling) whose length does not depend on the data (`num_train_steps`
  > 0), on a machine with `COMPILE_AHEAD_MIN_CORES` (or SMD_COMPILE_AHEAD=1). Not
  for prepared data sets, where there is little to overlap and a data error would
  have to wait for the compilation.
  """
  wanted = env_flags.on_off("SMD_COMPILE_AHEAD",
                            (os.cpu_count() or 1) >= COMPILE_AHEAD_MIN_CORES)
  return (wanted and config.num_train_steps > 0 and bool(config.data.synthetic.enabled)
          and not os.path.isdir(os.path.join(workdir, "checkpoints")))


def compile_ahead(config, steps: steps_lib.Steps, state, mesh) -> steps_lib.CompileAhead:
  """Starts compiling the train step, and the evaluation and figure steps if the data
  will have a validation split, for the batches the pipeline will give."""
  resolution, state = int(config.data.resolution), steps_lib.abstract(state)
  evaluation = (state, steps_lib.abstract_batch(resolution, config.eval_batch_size, mesh,
                                                padded=True))
  jobs = [("train_step", steps.train_step,
           (state, steps_lib.abstract_batch(resolution, config.batch_size, mesh)))]
  if config.data.synthetic.num_frames.get("validation", 0) > 0:
    jobs += [("eval_step", steps.eval_step, evaluation),
             ("predict_step", steps.predict_step, evaluation)]
  return steps_lib.CompileAhead(jobs)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its newest intact checkpoint), then evaluates.

  Leaves in `workdir`: config.json, checkpoints/, tensorboard/, metrics.jsonl,
  eval_validation_<step>.json and images/. Everything that can be wrong with the
  input (model names, data, a checkpoint of another model, batch sizes, another
  run in the same workdir) raises `UserError` before anything in the workdir is
  written. The run holds `<workdir>/train.lock` (`workdir_lock`) throughout.

  A checkpoint that does not restore (e.g. a file cut short after it was
  written) is skipped with a warning and renamed `<step>.damaged`; the run
  resumes from the newest one that restores.

  On SIGTERM (or a JAX preemption notice on a multi-host run) the state is saved
  at the next step boundary and the function returns {"step": k, "preempted": 1}.

  Returns:
    The final validation metrics (plus the constant baseline's RMSE).
  """
  mesh = data_parallel.make_mesh()
  check_batch_sizes(config, mesh)
  with workdir_held(workdir):
    model = build_model(config)
    convert.fetch_init_from(config, workdir)  # a bad Hub id fails before the data is built
    convert.maybe_init_from(model, config, workdir)  # config.init_from, fresh runs only
    ahead = None
    if compiles_ahead(config, workdir):
      steps, state = steps_lib.build_steps(config, model, config.num_train_steps, mesh)
      ahead = compile_ahead(config, steps, state, mesh)
    with ahead or contextlib.nullcontext():
      sources = load_data(config, workdir)
      total_steps = num_train_steps(config, len(sources["train"]))
      if ahead is None:
        steps, state = steps_lib.build_steps(config, model, total_steps, mesh)
      del model
      train_iter = train_iterator(config, sources["train"])
      state, damaged = restore_newest_intact(workdir, state, train_iter)
      if ahead is not None:
        waited = time.perf_counter()
        seconds = ahead.wait()
        logging.info("Compiled ahead of the data (%s); waited %.1f s for it.",
                     ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
                     time.perf_counter() - waited)

    write_config(config, workdir)
    # Evaluated checkpoints store their metrics; the best by config.best_metric is kept.
    eval_split = "validation" if "validation" in sources else None
    run = _Run(config=config, workdir=workdir, mesh=mesh, steps=steps, state=state,
               sources=sources, total_steps=total_steps, train_iter=train_iter,
               ckpt=checkpoints.Checkpointer(
                   workdir, max_to_keep=config.keep_checkpoints,
                   save_interval_steps=config.checkpoint_every_steps,
                   best_metric=checkpoints.best_metric(config) if eval_split else None),
               writer=MetricWriter(workdir))
    try:  # whatever happens, pending async saves complete and the logs are closed
      start = int(data_parallel.fetch(run.state.step))
      set_aside_damaged(run.ckpt, damaged, start)
      logging.info("Training %d steps (from step %d), global batch %d on %d device(s) in %d "
                   "process(es).", total_steps, start, config.batch_size, mesh.devices.size,
                   jax.process_count())
      preempted = train_steps(run, start)
      if preempted is not None:
        return {"step": preempted, "preempted": 1}
      return final_evaluation(run)
    finally:
      run.ckpt.close()
      run.writer.close()
