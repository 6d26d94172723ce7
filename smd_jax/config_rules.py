"""The rule of every config field, by dotted path, and the rules between fields.

`FIELDS` has one entry per field of configs/base.py (and the optional fields
that code reads with a default: `best_metric`, `model.drop_path_rate`, ...); a
new field gets its entry here, next to its neighbours in the same order as
base.py (tests/test_validation.py fails for a field of base.py or of a paper
config that has none). `*` matches any key of a mapping (task names under
`tasks` and `model.heads`). Registry names are checked against the registries
themselves, so adding an encoder, loss or transform needs no change here.

`CHECKS` are the rules that read several fields (resolution vs the encoder's
stride, batch sizes vs devices, heads vs tasks, ...). `smd_jax.validation`
applies both.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Iterable, Mapping

from smd_jax import losses, paper, semantics, tasks as tasks_lib
from smd_jax.convert import hub
from smd_jax.models import layers, model as model_lib, registry
from smd_jax.training import steps
from smd_jax.validation import (TRAINING, Bool, Check, Directory, Float, Int, Ints, Name,
                                Problem, Section, Text, Weights, suggest)
from tfds_hypersim import hypersim_dataset_builder as hdb

DATA_SETS = ("hypersim",)  # data.name: the one data set the input pipeline reads
# losses._soft_confusion's `unlabelled` values (Dice, Focal Tversky).
UNLABELLED = ("exclude", "count")
IMAGENET = hub.IMAGENET


def is_hub_id(value: str) -> bool:
  """org/name[@revision] (`hub.parse_hub_id`); an existing path is a directory instead."""
  return hub.parse_hub_id(value) is not None


def converted_problem(directory: str) -> str | None:
  """Why `directory` is not one `python -m smd_jax.convert` wrote (its metadata file and
  state folder, smd_jax/convert/io.py), or None; the arrays are read when loaded."""
  from smd_jax.convert import io  # pylint: disable=g-import-not-at-top
  try:
    io.read_metadata(directory)
  except (OSError, ValueError) as e:  # missing, unreadable or damaged metadata
    reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
    return f"is not a converted checkpoint ({reason})"
  if not os.path.isdir(os.path.join(directory, io.STATE_DIR)):
    return (f"is not a converted checkpoint (no {io.STATE_DIR}/ folder: damaged? convert the "
            "weights again with python -m smd_jax.convert)")
  return None

FIELDS = {
    "seed": Int(0, 2**32 - 1, required=True),

    "data": Section(required=True),
    "data.name": Name(DATA_SETS, "data set"),
    "data.data_dir": Directory("TFDS data", optional=True),
    "data.manual_dir": Directory("raw HyperSim frames", optional=True),
    "data.resolution": Int(1, required=True),
    "data.split_scheme": Name(hdb.SPLIT_SCHEMES, "split scheme"),
    "data.depth_type": Name(hdb.DEPTH_TYPES, "depth type"),
    "data.num_threads": Int(1),
    "data.num_workers": Int(0),
    "data.prefetch_batches": Int(0),
    "data.worker_timeout_s": Float(0, lo_open=True, optional=True),
    "data.synthetic": Section(),
    "data.synthetic.enabled": Bool(),
    "data.synthetic.seed": Int(0, 2**32 - 1),
    "data.synthetic.num_frames": Section(),
    "data.synthetic.num_frames.*": Int(0),

    "model": Section(required=True),
    "model.encoder": Name(registry.ENCODERS, "encoder", required=True),
    "model.decoder": Name(registry.DECODERS, "decoder", required=True),
    "model.dtype": Name(layers.DTYPES, "compute dtype"),
    "model.heads": Section(nonempty=True, required=True),
    "model.heads.*": Section(),
    "model.heads.*.num_outputs": Int(1),
    "model.heads.*.activation": Name(registry.ACTIVATIONS, "head activation"),
    "model.input_block": Name(registry.INPUT_BLOCKS, "input block", optional=True),
    "model.head_kernel_size": Int(1, 15, optional=True),
    "model.stem_init": Name(model_lib.STEM_INITS, "stem init"),
    "model.branch_init": Name(model_lib.BRANCH_INITS, "branch init"),
    "model.drop_path_rate": Float(0, 1, hi_open=True),
    "model.decoder_channels": Ints(optional=True),

    "init_from": Weights((IMAGENET,), is_hub_id, converted_problem, commands=TRAINING),
    "semantic_transform": Name(semantics.SEMANTIC_TRANSFORMS, "semantic transform",
                               required=True),

    "tasks": Section(nonempty=True, required=True),
    "tasks.*": Section(),
    "tasks.*.kind": Name(tasks_lib.TASKS, "task"),
    "tasks.*.loss": Name(losses.LOSSES, "loss"),
    "tasks.*.weight": Float(0),
    # Task parameters (fields of the task's class in smd_jax/tasks.py).
    "tasks.*.params": Section(),
    "tasks.*.params.max_depth": Float(0, lo_open=True),
    "tasks.*.params.num_classes": Int(1, semantics.NUM_NYU40_CLASSES),
    "tasks.*.params.class_order": Name(tasks_lib.CLASS_ORDERS, "class order"),
    "tasks.*.params.threshold": Float(0),
    "tasks.*.params.normalised_depth": Bool(),
    "tasks.*.params.strength": Name(tasks_lib.EDGE_STRENGTHS, "edge strength"),
    "tasks.*.params.mask_invalid": Bool(),
    # Loss parameters (keyword arguments of the loss in smd_jax/losses.py).
    "tasks.*.loss_params": Section(),
    "tasks.*.loss_params.c_fraction": Float(0, 1, lo_open=True),
    "tasks.*.loss_params.normalize": Name(losses.NORMALIZERS, "normaliser"),
    "tasks.*.loss_params.activation": Name(losses.PROBABILITIES, "probability activation"),
    "tasks.*.loss_params.unlabelled": Name(UNLABELLED, "unlabelled-pixel mode"),
    "tasks.*.loss_params.smooth": Float(0),
    "tasks.*.loss_params.alpha": Float(0, 1),
    "tasks.*.loss_params.beta": Float(0, 1),
    "tasks.*.loss_params.gamma": Float(0, lo_open=True),
    "tasks.*.loss_params.ce_weight": Float(0),
    "tasks.*.loss_params.other_weight": Float(0),
    "paper_row": Name(paper.PUBLISHED, "paper row", optional=True),

    "optimizer": Section(required=True),
    "optimizer.name": Name(steps.OPTIMIZERS, "optimizer", required=True),
    "optimizer.learning_rate": Float(0, lo_open=True, required=True),
    "optimizer.end_learning_rate": Float(0),
    "optimizer.warmup_steps": Int(0),
    "optimizer.schedule_unit": Name(steps.SCHEDULE_UNITS, "learning-rate schedule unit"),
    "optimizer.b1": Float(0, 1, hi_open=True),
    "optimizer.b2": Float(0, 1, hi_open=True),
    "optimizer.eps": Float(0, lo_open=True),
    "optimizer.momentum": Float(0, 1, hi_open=True, optional=True),
    "batch_size": Int(1, required=True),
    "eval_batch_size": Int(1, required=True),
    "num_epochs": Int(1),
    "num_train_steps": Int(1, special=(-1,), meaning=": from num_epochs"),
    "log_every_steps": Int(1),
    "eval_every_steps": Int(1, special=(-1,), meaning=": at the end only"),
    "checkpoint_every_steps": Int(1),
    "keep_checkpoints": Int(1),
    "max_nonfinite_steps": Int(1),
    "max_eval_examples": Int(1, optional=True),
    "num_images": Int(0),
    "best_metric": Text(lambda s: "/" in s, "a metric name such as 'depth/rmse'",
                        optional=True),
}


# ------------------------------------------------------------------------------------
# Rules between fields. Each reads the plain-dict config and yields Problems.


def _nearest_multiples(value: int, step: int) -> str:
  low = value // step * step
  return " or ".join(str(v) for v in (low, low + step) if v > 0)


def resolution_vs_stride(config, ctx):
  """The model needs H, W multiples of the encoder's largest stride (`DenseModel`), which
  is the decoder's `output_stride` (`registry.build_model` builds the encoder at it)."""
  resolution = config["data"]["resolution"]
  decoder = config["model"]["decoder"]
  stride = getattr(registry.DECODERS[decoder], "output_stride", 32)
  if resolution % stride:
    yield Problem("data.resolution", (
        f"config.data.resolution={resolution} is not a multiple of {stride}, the largest "
        f"stride of the encoder {config['model']['encoder']!r} under the {decoder!r} decoder; "
        f"use {_nearest_multiples(resolution, stride)}."))


def batches_vs_devices(config, ctx):
  """Global batches split evenly over the devices (`data_parallel.check_batch_size`)."""
  if not ctx.num_devices:
    return
  names = ("batch_size", "eval_batch_size") if ctx.command in TRAINING else ("eval_batch_size",)
  for name in names:
    value = config[name]
    flag = f"config.{name}"
    if name == "eval_batch_size" and ctx.eval_batch_size and ctx.command not in TRAINING:
      value, flag = ctx.eval_batch_size, "--batch_size"
    if value % ctx.num_devices:
      yield Problem(name, (
          f"{flag}={value} is not divisible by the {ctx.num_devices} devices; use "
          f"{_nearest_multiples(value, ctx.num_devices)}."))


def _task_kind(name: str, task: Mapping[str, Any]) -> str | None:
  kind = task.get("kind", name) if isinstance(task, Mapping) else None
  return kind if kind in tasks_lib.TASKS else None


def heads_vs_tasks(config, ctx):
  """One head per task with the channels the task reads (`Task.num_outputs`); a depth task."""
  heads, task_configs = config["model"]["heads"], config["tasks"]
  for name, task in task_configs.items():
    kind = _task_kind(name, task)
    if name not in heads:
      yield Problem(f"tasks.{name}", (
          f"config.tasks.{name} has no head{suggest(name, heads)}; add "
          f"config.model.heads.{name} (num_outputs, activation) or remove the task."))
      continue
    if kind is None or not isinstance(heads[name], Mapping):
      continue
    try:
      task_obj = tasks_lib.TASKS[kind](**dict(task.get("params", None) or {}))
      want = task_obj.num_outputs
    except (TypeError, ValueError):
      continue  # a parameter problem, reported by its own rule
    have = heads[name].get("num_outputs")
    if have != want:
      yield Problem(f"model.heads.{name}.num_outputs", (
          f"config.model.heads.{name}.num_outputs={have!r} but the {kind!r} task reads "
          f"{want} channel(s); set it to {want}."))
  for name in heads:
    if name not in task_configs:
      yield Problem(f"model.heads.{name}", (
          f"config.model.heads.{name} has no task{suggest(name, task_configs)}; add "
          f"config.tasks.{name} (loss, weight) or remove the head."))
  if not any(_task_kind(n, t) == "depth" for n, t in task_configs.items()):
    yield Problem("tasks", "config.tasks has no depth task; add tasks.depth (loss 'l1', "
                           "weight 1.0), as configs/base.py has.")


def _names_problems(field: str, given: Iterable[str], known: Iterable[str], owner: str):
  known = sorted(known)
  for key in given:
    if key not in known:
      yield Problem(f"{field}.{key}", (
          f"config.{field}.{key} is not a parameter of {owner}{suggest(key, known)}; "
          f"known: {', '.join(known) or 'none'}."))


def task_parameters(config, ctx):
  """`tasks.<t>.params` are fields of the task's class, `loss_params` keyword arguments
  of its loss (a combination such as 'dice_ce' also passes on those of 'dice')."""
  for name, task in config["tasks"].items():
    if not isinstance(task, Mapping):
      continue
    kind = _task_kind(name, task)
    params = task.get("params", None)
    if kind is not None and isinstance(params, Mapping):
      fields = [f.name for f in dataclasses.fields(tasks_lib.TASKS[kind])]
      yield from _names_problems(f"tasks.{name}.params", params, fields, f"the {kind!r} task")
    loss = task.get("loss")
    loss_params = task.get("loss_params", None)
    if loss in losses.LOSSES and isinstance(loss_params, Mapping):
      yield from _names_problems(f"tasks.{name}.loss_params", loss_params,
                                 loss_keywords(loss), f"the {loss!r} loss")


def loss_keywords(loss: str) -> set[str]:
  """Keyword arguments `LOSSES[loss]` takes (with those of the loss it combines with CE)."""
  found = set()
  for param in inspect.signature(losses.LOSSES[loss]).parameters.values():
    if param.kind is param.KEYWORD_ONLY:
      found.add(param.name)
    elif param.kind is param.VAR_KEYWORD:
      base = loss[:-len("_ce")] if loss.endswith("_ce") else None
      if base in losses.LOSSES and base != loss:
        found |= loss_keywords(base)
  return found


def input_block_needs_semantics(config, ctx):
  block = config["model"].get("input_block")
  transform = config["semantic_transform"]
  if block and not semantics.EXTRA_CHANNELS.get(transform):
    yield Problem("model.input_block", (
        f"config.model.input_block={block!r} maps semantic input channels, but "
        f"semantic_transform={transform!r} gives none; set config.semantic_transform (e.g. "
        "'onehot40') or config.model.input_block=None."))


def odd_head_kernel(config, ctx):
  size = config["model"].get("head_kernel_size")
  if size is not None and size % 2 == 0:
    yield Problem("model.head_kernel_size", (
        f"config.model.head_kernel_size={size} is even: the head's output would not keep the "
        f"input's size; use {size - 1} or {size + 1}."))


def imagenet_weights_exist(config, ctx):
  """init_from 'imagenet' names the authors' weights, which exist for some encoders only."""
  value = config.get("init_from")
  encoder = config["model"]["encoder"]
  if isinstance(value, str) and value.strip() == IMAGENET:
    from smd_jax.convert import hub  # pylint: disable=g-import-not-at-top
    if encoder not in hub.DEFAULT_WEIGHTS:
      yield Problem("init_from", (
          f"config.init_from='imagenet' has no weights for the encoder {encoder!r} (there are "
          f"for {', '.join(sorted(hub.DEFAULT_WEIGHTS))}); set --config.init_from to a Hub id "
          "org/name[@revision], a converted directory, or '' (random init)."))


def learning_rate_decays(config, ctx):
  opt = config["optimizer"]
  end = opt.get("end_learning_rate", 0.0)
  if end > opt["learning_rate"]:
    yield Problem("optimizer.end_learning_rate", (
        f"config.optimizer.end_learning_rate={end:g} is above learning_rate="
        f"{opt['learning_rate']:g} (the cosine schedule decays to it); lower it."))


def synthetic_has_training_frames(config, ctx):
  synthetic = config["data"].get("synthetic") or {}
  frames = synthetic.get("num_frames") or {}
  if isinstance(frames, Mapping) and synthetic.get("enabled") is True and not frames.get("train"):
    yield Problem("data.synthetic.num_frames.train", (
        "config.data.synthetic.enabled is True but num_frames.train is 0; set "
        "config.data.synthetic.num_frames.train (e.g. 160)."))


CHECKS = (
    Check(("data.resolution", "model.decoder"), resolution_vs_stride),
    Check(("batch_size", "eval_batch_size"), batches_vs_devices),
    Check(("model.heads", "tasks"), heads_vs_tasks),
    Check((), task_parameters),
    Check(("model.input_block", "semantic_transform"), input_block_needs_semantics),
    Check(("model.head_kernel_size",), odd_head_kernel),
    Check(("init_from", "model.encoder"), imagenet_weights_exist, commands=TRAINING),
    Check(("optimizer.learning_rate", "optimizer.end_learning_rate"), learning_rate_decays),
    Check(("data.synthetic",), synthetic_has_training_frames),
)

__all__ = ["CHECKS", "FIELDS", "converted_problem", "is_hub_id", "loss_keywords"]
