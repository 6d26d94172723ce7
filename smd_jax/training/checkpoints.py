"""Orbax checkpointing of the train state and the data iterator.

One checkpoint holds the model parameters, BatchNorm statistics, optimizer
state and step (`state`) and the grain iterator position (`data`), so a run that
restarts in the same workdir resumes exactly where it stopped. Saves are
asynchronous; Orbax writes each step to a temporary folder and renames it when
complete, so a crash never leaves a half-written checkpoint that looks valid.

Keep-best: with `best_metric` (e.g. "depth/rmse"), a save may carry the
evaluation metrics of its step; they are stored with the checkpoint, and the
best checkpoint by that metric is kept besides the last N (Orbax preservation
policies LatestN + BestN). Saves without an evaluation store no value of the
metric and are kept only while among the last N. The final step is saved before
its (long) evaluation and gets its metrics afterwards (`attach_metrics`).

Damage after the fact (a data file cut short by a bad disk, an interrupted copy
or a full quota) is not something Orbax's atomic rename can prevent:
`restore_newest_intact` tries the newest checkpoints first and reports each one
that does not restore, and `set_aside` renames such a step to
`<step>.damaged` (a name Orbax does not list as a step), so nothing is deleted.
"""

from __future__ import annotations

import json
import logging as python_logging
import math
import os
import sys
import traceback
from typing import Any, Callable, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from smd_jax.errors import UserError


_PLAIN_ARRAY_SAVES = False


def _use_plain_array_saves_on_cpu() -> None:
  """Turns off Orbax's replica-parallel saving on the CPU backend.

  Replica-parallel saving slices each replicated array across its replicas with a
  small compiled program per array shape; on CPU (e.g. 8 simulated devices) those
  compiles made the first save of our ~430-array state take 25 s instead of 1 s.
  Orbax already turns it off for GPU platforms.
  """
  global _PLAIN_ARRAY_SAVES
  if jax.default_backend() == "cpu" and not _PLAIN_ARRAY_SAVES:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _PLAIN_ARRAY_SAVES = True


# Metrics where a larger value is better; every other metric: smaller is better.
HIGHER_IS_BETTER = ("delta1", "delta2", "delta3", "miou", "pixel_accuracy", "f1", "precision",
                    "recall")


DEFAULT_BEST_METRIC = "depth/rmse"


def best_metric(config) -> str:
  """The metric that picks the best checkpoint: `config.best_metric`, else depth RMSE."""
  return config.get("best_metric", None) or DEFAULT_BEST_METRIC


def best_mode(metric: str) -> str:
  """'max' for metrics where larger is better (by their last name part), else 'min'."""
  return "max" if metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"


def _finite_floats(values: Mapping[str, Any]) -> dict[str, float]:
  out = {}
  for k, v in values.items():
    try:
      v = float(v)
    except (TypeError, ValueError):
      continue
    if math.isfinite(v):
      out[k] = v
  return out


class NoIntactCheckpoint(Exception):
  """No checkpoint restored; `damaged` lists (step, first line of its error), newest first."""

  def __init__(self, damaged: list[tuple[int, str]]):
    super().__init__(", ".join(f"step {s}: {why}" for s, why in damaged))
    self.damaged = damaged


def _first_line(e: BaseException, limit: int = 200) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  text = lines[0].split(" See full TensorStore details")[0] if lines else ""  # a repr follows
  return f"{type(e).__name__}: {text[:limit]}".rstrip(": ")


def _is_read_outliving_its_restore(unraisable) -> bool:
  """A TensorStore read calling back into the closed loop of its restore (below)."""
  frames = [f.name for f in traceback.extract_tb(unraisable.exc_traceback)]
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"
          and frames[-2:] == ["call_soon_threadsafe", "_check_closed"])


class _NoAbandonedReads(python_logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" for Orbax's array reads (below)."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Task exception was never retrieved")
                and "coro=<async_deserialize()" in message)


def _silence_reads_abandoned_by_a_failed_restore() -> None:
  """Silences two harmless reports of a restore that fails part-way (`restore`).

  When one array of a checkpoint cannot be read, Orbax's restore fails and closes
  the event loop it ran in, while the other reads it started go on. Each then
  reports, at some later moment and with a traceback, although nothing is wrong
  (the damage was reported and an older checkpoint restored): TensorStore's call
  back into the closed loop as "Exception ignored ... RuntimeError: Event loop is
  closed" (an unraisable exception), and a read that failed too, once collected, as
  asyncio's "Task exception was never retrieved". From the first restore on, the
  process's unraisable-exception hook drops exactly the first (passing every other
  to the hook it replaced) and the "asyncio" logger the second.
  """
  if not getattr(sys.unraisablehook, "drops_abandoned_reads", False):
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _is_read_outliving_its_restore(unraisable):
        previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook
  asyncio_log = python_logging.getLogger("asyncio")
  if not any(isinstance(f, _NoAbandonedReads) for f in asyncio_log.filters):
    asyncio_log.addFilter(_NoAbandonedReads())


class Checkpointer:
  """Keep-last-N (and optionally keep-best) checkpoints in `<workdir>/checkpoints`.

  Saved every K steps. With `best_metric`, the best checkpoint by that metric
  (lower is better unless `best_mode(best_metric)` says otherwise) is kept too.
  `read_only` opens existing checkpoints for restoring only: nothing is created,
  saved or deleted.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1000,
               async_save: bool = True, best_metric: str | None = None,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.best_metric = best_metric
    _use_plain_array_saves_on_cpu()
    policies = ocp.checkpoint_managers
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             enable_async_checkpointing=False)
      # Handlers are named so that the state's metadata can be read before a restore,
      # and so that training can restore the data iterator through this read-only view.
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": grain.checkpoint.CheckpointHandler()})
      return
    # Every K steps. Preemption saves are the training loop's (forced, see
    # multihost.PreemptionWatch), so that one place decides when to stop.
    save_policy = policies.FixedIntervalPolicy(save_interval_steps)
    keep = dict(max_to_keep=max_to_keep)
    if best_metric is not None:
      mode = best_mode(best_metric)
      worst = -math.inf if mode == "max" else math.inf

      def score(stored):  # saves without an evaluation hold no value: they rank last
        value = (stored or {}).get(best_metric)
        return worst if value is None or not math.isfinite(value) else float(value)

      # best_fn makes Orbax store the metrics with each save; the preservation
      # policy keeps the last N plus the single best.
      keep = dict(
          best_fn=score, best_mode=mode,
          preservation_policy=policies.AnyPreservationPolicy([
              policies.LatestN(n=max_to_keep),
              policies.BestN(get_metric_fn=score, reverse=mode == "min", n=1,
                             keep_checkpoints_without_metrics=False),
          ]))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy, create=True, enable_async_checkpointing=async_save,
        **keep)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any | None = None, *,
           force: bool = False, metrics: Mapping[str, Any] | None = None) -> bool:
    """Saves when `step` is on the save interval (or `force`); returns whether it did.

    `metrics`: this step's evaluation results; stored with the checkpoint when
    keep-best is on (a save with metrics is always made, so every evaluated step
    can be the best one).
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    kwargs = {}
    if self.best_metric is not None:
      # An empty dict, not None, for saves without an evaluation (None makes
      # Orbax warn on every save); it ranks last for keep-best.
      kwargs["metrics"] = _finite_floats(metrics or {})
      force = force or bool(metrics)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force, **kwargs)
    if saved:
      logging.info("Saving checkpoint for step %d to %s", step, self.directory)
    return saved

  def metrics(self, step: int) -> dict[str, float] | None:
    """The evaluation metrics stored with checkpoint `step` (None: none stored)."""
    stored = self._manager.metrics(step)
    return None if stored is None else dict(stored)

  def state_metadata(self, step: int) -> Any:
    """The saved train state's tree with array metadata (shapes, dtypes), nothing loaded."""
    return self._manager.item_metadata(step)["state"].tree

  def best_step(self, metric: str | None = None) -> int | None:
    """The kept checkpoint with the best stored value of `metric` (default: `best_metric`).

    None when no kept checkpoint has a value of it (e.g. no evaluation during
    training, or checkpoints written before keep-best).
    """
    metric = metric or self.best_metric or DEFAULT_BEST_METRIC
    sign = -1.0 if best_mode(metric) == "max" else 1.0
    scored = []
    for step in self.all_steps():
      value = (self.metrics(step) or {}).get(metric)
      if value is not None and math.isfinite(value):
        scored.append((sign * float(value), -step, step))  # ties: the later step
    return min(scored)[2] if scored else None

  def restore(self, abstract_state: Any, data_iterator: Any | None = None,
              step: int | None = None) -> tuple[Any, int]:
    """Restores `step` (default: latest) into the structure/shardings of `abstract_state`.

    `abstract_state` is a pytree of arrays or `jax.ShapeDtypeStruct`s with
    shardings; `data_iterator`, if given, is moved to the saved position.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    _silence_reads_abandoned_by_a_failed_restore()  # before: they may come at once
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint for step %d from %s", step, self.directory)
    return restored["state"], step

  def restore_newest_intact(
      self, abstract_state: Any, data_iterator: Any | None = None, *,
      steps: list[int] | None = None, check: Callable[[int], None] | None = None,
      agree: Callable[[bool], bool] = lambda ok: ok,
  ) -> tuple[Any, int, list[tuple[int, str]]]:
    """Restores the newest of `steps` (default: all kept) that restores completely.

    A step whose metadata or data cannot be read (any error but a `UserError`)
    is passed over. `check(step)` runs before each restore and may raise (e.g.
    a `UserError` for a checkpoint of another model: that is not damage and
    ends the search). `agree(ok)` makes all processes of a multi-host run take
    the same decision (default: this process's).

    Returns:
      (state, step, damaged): the restored state, its step, and (step, reason)
      of each newer step that failed, newest first.

    Raises:
      NoIntactCheckpoint: none of `steps` restored (every one is listed).
    """
    candidates = sorted(self.all_steps() if steps is None else steps, reverse=True)
    if not candidates:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    damaged = []
    for step in candidates:
      error = None
      try:
        if check is not None:  # (which reads the metadata: damage there must fail here first)
          self.state_metadata(step)
          check(step)
        restored, _ = self.restore(abstract_state, data_iterator, step=step)
      except UserError:  # bad input (another model's checkpoint), not damage
        raise
      except Exception as e:  # pylint: disable=broad-except
        error = _first_line(e)
      if agree(error is None):
        return restored, step, damaged
      damaged.append((step, error or "unreadable on another process"))
    raise NoIntactCheckpoint(damaged)

  def set_aside(self, step: int, reason: str) -> str:
    """Renames checkpoint `step` to `<step>.damaged[-k]` (kept, no longer a step to Orbax).

    Writes `reason` into it as DAMAGED.txt. Returns the new path. Call on one
    process only; `reload()` the others' view afterwards.
    """
    source = os.path.join(self.directory, str(step))
    target, k = f"{source}.damaged", 1
    while os.path.exists(target):
      k += 1
      target = f"{source}.damaged-{k}"
    os.rename(source, target)
    with open(os.path.join(target, "DAMAGED.txt"), "w") as f:
      f.write(f"Checkpoint {step} did not restore and was set aside by smd_jax.train: "
              f"{reason}\n")
    self.reload()
    return target

  def attach_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Stores evaluation `metrics` with the already saved checkpoint `step`, for keep-best.

    Orbax takes metrics only with a save; the final step is saved before its
    evaluation (so a crash in it loses no step), so its metrics are written
    afterwards in Orbax's own layout, `<step>/metrics/metrics` (JSON, what
    `save(metrics=...)` writes; tests/test_checkpoints.py compares the two).
    Process 0 writes; a no-op without keep-best.
    """
    if self.best_metric is None:
      return
    self.wait()
    if jax.process_index() == 0:
      folder = os.path.join(self.directory, str(step), "metrics")
      os.makedirs(folder, exist_ok=True)
      temporary = os.path.join(folder, "metrics.tmp")
      with open(temporary, "w") as f:
        json.dump(_finite_floats(metrics), f)
      os.replace(temporary, os.path.join(folder, "metrics"))
    self.reload()

  def reload(self) -> None:
    """Re-reads the kept steps (and their metrics) from disk."""
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
