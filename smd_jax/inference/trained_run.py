"""A trained model back from its workdir: config, checkpoint choice, restored state.

Shared by `smd_jax.evaluate` and `smd_jax.predict`. The config is the run's own
`config.json` (written by the trainer) unless one is given; the checkpoint is
`latest`, `best` (by the metric stored with evaluated checkpoints, see
`checkpoints.Checkpointer`) or a step number. Problems a user can fix (no
checkpoint, a config that does not match it, ...) raise `UserError`, whose
message is one line; the command-line mains print it without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging


from smd_jax.errors import UserError
from smd_jax.training import checkpoints, data_parallel, steps as steps_lib
from smd_jax.training.steps import Steps, TrainState


def load_config(workdir: str, config: Any = None):
  """`config` if given, else the run's `<workdir>/config.json` as a ConfigDict."""
  if config is not None:
    return config
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise UserError(f"No workdir {workdir!r}.")
  if not os.path.isfile(path):
    raise UserError(f"{path} not found (a workdir written by smd_jax.train has one); "
                    "pass --config CONFIG.py.")
  try:
    with open(path) as f:
      fields = json.load(f)
  except (OSError, ValueError) as e:  # unreadable, cut short, not JSON
    raise UserError(f"Cannot read {path}: {str(e).splitlines()[0]}; it is damaged: pass "
                    "--config CONFIG.py (the file the run was trained with).") from e
  if not isinstance(fields, dict):
    raise UserError(f"{path} holds a {type(fields).__name__}, not the config's fields; it is "
                    "damaged: pass --config CONFIG.py (the file the run was trained with).")
  return ml_collections.ConfigDict(fields)


def parse_checkpoint(which: str | int) -> str | int:
  """'latest', 'best' or a step number (int or digits)."""
  if isinstance(which, int):
    return which
  text = str(which).strip().lower()
  if text in ("latest", "best"):
    return text
  if text.isdigit():
    return int(text)
  raise UserError(f"--checkpoint must be latest, best or a step number, not {which!r}.")


def select_step(ckpt: checkpoints.Checkpointer, which: str | int, metric: str) -> int:
  """The checkpoint step that `which` names in `ckpt`; UserError if there is none."""
  which = parse_checkpoint(which)
  steps = ckpt.all_steps()
  if not steps:
    raise UserError(f"No checkpoint in {ckpt.directory} (train first: python -m smd_jax.train "
                    "--config CFG --workdir DIR).")
  if which == "latest":
    return max(steps)
  if which == "best":
    step = ckpt.best_step(metric)
    if step is None:
      raise UserError(
          f"No checkpoint in {ckpt.directory} has a stored {metric!r}: checkpoints carry "
          "metrics only where training evaluated them (config.eval_every_steps, and the final "
          f"step). Use --checkpoint latest or a step ({', '.join(map(str, steps))}).")
    return step
  if which not in steps:
    raise UserError(f"No checkpoint for step {which} in {ckpt.directory}; kept steps: "
                    f"{', '.join(map(str, steps))}.")
  return which


def _path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _shapes(tree) -> dict[str, tuple]:
  """'params/encoder/.../kernel' -> shape of every array (Orbax's '/value' leaf suffix dropped)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    name = _path_name(path)
    out[name[:-len("/value")] if name.endswith("/value") else name] = tuple(
        getattr(leaf, "shape", ()))
  return out


def check_matches(ckpt: checkpoints.Checkpointer, step: int, state: TrainState,
                  config_source: str, parts: tuple[str, ...] = ("params", "model_state")) -> None:
  """UserError naming the first differences if the model does not fit the checkpoint.

  Compares the names and shapes of the arrays in `parts` of the train state
  (parameters and statistics; training adds the optimizer state) with the
  checkpoint's metadata, before Orbax's less readable restore errors.
  """
  try:
    saved = ckpt.state_metadata(step)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"Cannot read checkpoint {step} in {ckpt.directory}: "
                    f"{str(e).splitlines()[0][:200]}") from e
  saved, wanted = _shapes(saved), _shapes(state)
  keep = lambda d: {k: v for k, v in d.items() if k.split("/")[0] in parts}
  saved, wanted = keep(saved), keep(wanted)
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  shape = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  if not (missing or extra or shape):
    return
  details = []
  if shape:
    k = shape[0]
    details.append(f"{len(shape)} array(s) differ in shape, e.g. {k}: {saved[k]} in the "
                   f"checkpoint, {wanted[k]} in the model")
  if missing:
    details.append(f"{len(missing)} not in the checkpoint, e.g. {missing[0]}")
  if extra:
    details.append(f"{len(extra)} only in the checkpoint, e.g. {extra[0]}")
  raise UserError(f"The config ({config_source}) does not match checkpoint {step} in "
                  f"{ckpt.directory}: {'; '.join(details)}.")


def restore_intact(ckpt: checkpoints.Checkpointer, state: TrainState, step: int,
                   which: str | int, config_source: str) -> tuple[TrainState, int]:
  """`state` restored from checkpoint `step`, the one `which` selected.

  With `which` = latest, a step that does not restore (damaged, e.g. a file cut
  short) is passed over with a one-line warning for the newest older one that
  does. For `best` or a step number, and when nothing restores, a UserError
  names the step, why, and the other kept steps. Nothing is moved or deleted:
  evaluation only reads the workdir (training sets damaged steps aside).
  """
  candidates = [step]
  if parse_checkpoint(which) == "latest":
    candidates += sorted((s for s in ckpt.all_steps() if s < step), reverse=True)
  check = lambda s: check_matches(ckpt, s, state, config_source)
  try:
    state, restored, damaged = ckpt.restore_newest_intact(state, steps=candidates, check=check)
  except checkpoints.NoIntactCheckpoint as e:
    others = [str(s) for s in ckpt.all_steps() if s != step]
    where = (f"other kept checkpoints: {', '.join(others)} (--checkpoint STEP)" if others
             else "no other checkpoint is kept")
    raise UserError(
        f"Checkpoint {step} in {ckpt.directory} does not restore ({e.damaged[0][1]}): it is "
        f"damaged, or the config ({config_source}) does not match checkpoint {step}; "
        f"{where}.") from e
  for bad, reason in damaged:
    logging.warning("Checkpoint %d in %s does not restore (%s): damaged? Using step %d, the "
                    "newest that does.", bad, ckpt.directory, reason, restored)
  return state, restored


@dataclasses.dataclass
class Loaded:
  """A restored model with its jitted steps."""

  config: Any
  workdir: str
  step: int
  steps: Steps
  state: TrainState
  mesh: Any

  @property
  def max_depth(self) -> float:
    return float(self.steps.tasks["depth"].max_depth)


def load(workdir: str, *, config: Any = None, checkpoint: str | int = "latest",
         mesh=None) -> Loaded:
  """Builds the model of `config` (default: the workdir's) and restores a checkpoint into it."""
  config_source = "the given config" if config is not None else os.path.join(workdir,
                                                                              "config.json")
  config = load_config(workdir, config)
  if "depth" not in config.get("tasks", {}):
    raise UserError(f"The config ({config_source}) has no depth task.")
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    step = select_step(ckpt, checkpoint, checkpoints.best_metric(config))
    mesh = mesh or data_parallel.make_mesh()
    try:
      model = steps_lib.create_model(config, config.seed)
      steps, state = steps_lib.build_steps(config, model, 1, mesh)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise UserError(f"Cannot build the model of the config ({config_source}): "
                      f"{str(e).splitlines()[0]}") from e
    del model
    state, step = restore_intact(ckpt, state, step, checkpoint, config_source)
  finally:
    ckpt.close()
  logging.info("Restored %s (step %d) with the config from %s.", workdir, step, config_source)
  return Loaded(config=config, workdir=workdir, step=step, steps=steps, state=state, mesh=mesh)
