"""The train state and the jitted train / eval / predict steps.

The model is split once with `nnx.split` into a graph definition and plain
state pytrees; the steps are pure functions of those pytrees, so they compose
with `jax.jit` and `NamedSharding`. Nothing here knows which paper row runs:
inputs, tasks, losses and weights all come from the config.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from smd_jax import env_flags, losses, semantics, tasks as tasks_lib
from smd_jax.models import registry
from smd_jax.training import data_parallel, state_work, xla_options


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of nnx.Param
  model_state: Any  # everything else: BatchNorm statistics, RNG counters
  opt_state: Any


@flax.struct.dataclass
class ForwardState:
  """What a forward pass reads of a `TrainState`."""

  params: Any
  model_state: Any


# Batch shapes whose prepared values a ForwardStep keeps at once (each is about the
# size of the parameters).
_PREPARED_SHAPES = 4


class ForwardStep:
  """A jitted forward program (eval, predict), called like the train step as
  ``f(state, batch)`` (and ``f.lower(state, batch)``).

  It hands XLA only the state's params and model state: the optimizer's moments are
  two thirds of the b4 UNet's 1,548 state leaves, and taking every leaf cost ~5 ms of
  argument handling per call (a b8@64 eval step computes for ~45 ms). And it runs as
  two programs (`state_work.split`): the work that reads the state only, once per
  state, and the rest once per batch. What the first makes (about the size of the
  parameters) is kept while the same state (its params and model state objects)
  comes back, as over an evaluation pass, for up to `_PREPARED_SHAPES` batch shapes.
  `SMD_SPLIT_FORWARD=0` runs it as one program.
  """

  def __init__(self, fun: Callable, mesh: Mesh, out_shardings: Any):
    self.jitted = xla_options.jit(  # of (ForwardState, batch): traced, or run when not split
        fun, mesh, xla_options.FORWARD,
        in_shardings=(data_parallel.replicated(mesh), data_parallel.batch_sharding(mesh)),
        out_shardings=out_shardings)
    self._mesh, self._out_shardings = mesh, out_shardings
    self._split_on = env_flags.on_off("SMD_SPLIT_FORWARD", True)
    # Split programs by argument signature (None: nothing to split off).
    self._programs: dict[Any, state_work.SplitPrograms | None] = {}
    # The last state called with, and what was prepared of it: a new state replaces both.
    self._state: state_work.StateSeen | None = None

  def _programs_for(self, forward_state, state_signature, batch
                    ) -> state_work.SplitPrograms | None:
    leaves, tree = jax.tree.flatten(batch)
    key = (state_signature, tree, state_work.signature(leaves))
    if key not in self._programs:
      self._programs[key] = state_work.SplitPrograms.build(
          self.jitted, forward_state, batch, mesh=self._mesh,
          out_shardings=self._out_shardings)
    return self._programs[key]

  def _programs_seen(self, seen: state_work.StateSeen, batch
                     ) -> state_work.SplitPrograms | None:
    """`_programs_for` through the state's own table of batch signatures (hashing the
    state's 655-entry signature for every call costs more than the lookup)."""
    leaves, tree = jax.tree.flatten(batch)
    key = (tree, state_work.signature(leaves))
    if key not in seen.programs:
      seen.programs[key] = self._programs_for(ForwardState(seen.params, seen.model_state),
                                              seen.signature, batch)
    return seen.programs[key]

  def _state_seen(self, state) -> state_work.StateSeen:
    """`state`'s leaves, flattened once while the same params and model state objects
    come back (flattening the b4 UNet's nnx state takes ~1 ms, 2% of a b8@64 eval
    step); a new state drops what was prepared for the last one."""
    seen = self._state
    if (seen is None or seen.params is not state.params
        or seen.model_state is not state.model_state):
      leaves, tree = jax.tree.flatten(ForwardState(state.params, state.model_state))
      # Replacing the old record frees its prepared values before new ones are made.
      seen = self._state = state_work.StateSeen(state.params, state.model_state, leaves,
                                                (tree, state_work.signature(leaves)))
    return seen

  def __call__(self, state, batch):
    if not self._split_on:
      return self.jitted(ForwardState(state.params, state.model_state), batch)
    seen = self._state_seen(state)
    programs = self._programs_seen(seen, batch)
    if programs is None:
      return self.jitted(ForwardState(state.params, state.model_state), batch)
    if programs not in seen.prepared:
      if len(seen.prepared) >= _PREPARED_SHAPES:  # e.g. predicting photos of many sizes
        del seen.prepared[next(iter(seen.prepared))]
      seen.prepared[programs] = programs.prepare(seen.leaves)
    return programs.apply([seen.leaves[i] for i in programs.passed], seen.prepared[programs],
                          batch)

  def lower(self, state, batch):
    forward_state = ForwardState(state.params, state.model_state)
    if not self._split_on:
      return self.jitted.lower(forward_state, batch)
    leaves, tree = jax.tree.flatten(forward_state)
    programs = self._programs_for(forward_state, (tree, state_work.signature(leaves)), batch)
    if programs is None:
      return self.jitted.lower(forward_state, batch)
    return programs.lower(forward_state, batch)

  def cache_sizes(self) -> dict[str, int]:
    """Compiled variants of each program (the split's two, or the whole one)."""
    # pylint: disable=protected-access
    sizes = {"whole": self.jitted._cache_size()}
    for programs in self._programs.values():
      if programs is not None:
        for name in ("prepare", "apply"):
          sizes[name] = sizes.get(name, 0) + getattr(programs, name)._cache_size()
    return sizes


@dataclasses.dataclass(frozen=True)
class Steps:
  """Everything built from a config that the loop needs; graph defs are static."""

  eval_graph: Any
  forward: Callable  # (state, batch) -> raw outputs of every head, eval mode (not jitted)
  tasks: dict[str, tasks_lib.Task]
  train_step: Callable
  eval_step: ForwardStep
  predict_step: ForwardStep


def model_config_for(config):
  """The model config with `in_channels` derived from the semantic transform."""
  model_config = config.model.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.in_channels = 3 + semantics.EXTRA_CHANNELS[config.semantic_transform]
  return model_config


def _cosine_per_step(opt, decay_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Cosine from `learning_rate` to `end_learning_rate` over `decay_steps`, every step."""
  del steps_per_epoch
  return optax.cosine_decay_schedule(opt.learning_rate, max(decay_steps, 1),
                                     alpha=opt.end_learning_rate / opt.learning_rate)


def _cosine_per_epoch(opt, decay_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """The same cosine over epochs, held constant within each epoch (a staircase): PyTorch's
  `CosineAnnealingLR(T_max=epochs, eta_min=end_learning_rate)` stepped once per epoch, as
  the Semantic-MD authors' trainer does. Epoch e of E has the rate of step e of E."""
  epochs = max(-(-decay_steps // steps_per_epoch), 1)
  per_epoch = optax.cosine_decay_schedule(opt.learning_rate, epochs,
                                          alpha=opt.end_learning_rate / opt.learning_rate)
  return lambda step: per_epoch(step // steps_per_epoch)


# How often the cosine's rate changes: `config.optimizer.schedule_unit`.
SCHEDULE_UNITS = {"step": _cosine_per_step, "epoch": _cosine_per_epoch}


def make_schedule(config, total_steps: int) -> optax.Schedule:
  """Cosine decay from `learning_rate` to `end_learning_rate`, after optional warm-up.

  `optimizer.schedule_unit` "step" (default) changes the rate every step; "epoch"
  every `total_steps // num_epochs` steps (`SCHEDULE_UNITS`).
  """
  opt = config.optimizer
  steps_per_epoch = max(total_steps // max(int(config.get("num_epochs", 1) or 1), 1), 1)
  unit = SCHEDULE_UNITS[opt.get("schedule_unit", None) or "step"]
  decay = unit(opt, total_steps - opt.warmup_steps, steps_per_epoch)
  if opt.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


OPTIMIZERS = {
    "adam": lambda opt, lr: optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps),
    "sgd": lambda opt, lr: optax.sgd(lr, momentum=opt.get("momentum")),
}


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {opt.name!r}; known: {sorted(OPTIMIZERS)}.")
  return OPTIMIZERS[opt.name](opt, schedule)


def create_model(config, seed: int):
  semantics.get_transform(config.semantic_transform)  # fail early on a typo
  return registry.build_model(model_config_for(config), rngs=nnx.Rngs(seed))


def total_loss(outputs, batch, task_objs, task_configs):
  """L = sum_t weight_t * loss_t(task t's prediction, target, valid)."""
  parts = {}
  total = 0.0
  for name, task in task_objs.items():
    cfg = task_configs[name]
    loss_fn = losses.get_loss(cfg.loss)
    loss = loss_fn(*task.loss_inputs(outputs[name], batch), **dict(cfg.get("loss_params", {})))
    parts[f"loss_{name}"] = loss
    total = total + cfg.weight * loss
  return total, parts


def build_steps(config, model, total_steps: int, mesh: Mesh) -> tuple[Steps, TrainState]:
  """Splits `model` and builds the jitted steps and the initial (replicated) state."""
  schedule = make_schedule(config, total_steps)
  tx = make_optimizer(config, schedule)
  task_objs = tasks_lib.build_tasks(config.tasks)
  missing = set(task_objs) - set(config.model.heads)
  if missing:
    raise ValueError(f"Tasks {sorted(missing)} have no head in config.model.heads.")
  transform = config.semantic_transform

  model.eval()
  eval_graph, _, _ = nnx.split(model, nnx.Param, ...)
  model.train()
  train_graph, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params))

  def train_step(state: TrainState, batch):
    inputs = semantics.model_inputs(batch, transform)

    def loss_fn(params):
      # copy=True: fresh Variables owned by this trace (BatchNorm updates them).
      net = nnx.merge(train_graph, params, state.model_state, copy=True)
      outputs = net(inputs)
      loss, parts = total_loss(outputs, batch, task_objs, config.tasks)
      _, _, new_model_state = nnx.split(net, nnx.Param, ...)
      return loss, (parts, outputs, new_model_state)

    (loss, (parts, outputs, new_model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)

    def update(old: TrainState) -> TrainState:
      updates, opt_state = tx.update(grads, old.opt_state, old.params)
      return TrainState(step=old.step, params=optax.apply_updates(old.params, updates),
                        model_state=new_model_state, opt_state=opt_state)

    # A non-finite loss or gradient (a bad batch, a diverging step) skips the
    # update: parameters, statistics and optimizer state stay as they were, so no
    # non-finite value ever enters the state. The loop counts and reports these. A
    # `cond`, not a `where` per leaf: the optimizer then runs only when its result is
    # kept, and the donated state is updated in place instead of copied first (the
    # whole step 6-11% faster on the CPU, docs/benchmarks.md).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.lax.cond(finite, update, lambda old: old, state)
    new_state = new_state.replace(step=state.step + 1)
    out = {"loss": loss, "grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite),
           "learning_rate": schedule(state.step), **parts}
    for name, task in task_objs.items():
      out.update({f"{name}/{k}": v for k, v in task.metric_sums(outputs[name], batch).items()})
    return new_state, out

  def forward(state: TrainState | ForwardState, batch):
    net = nnx.merge(eval_graph, state.params, state.model_state, copy=True)
    return net(semantics.model_inputs(batch, transform))

  def eval_step(state: ForwardState, batch):
    outputs = forward(state, batch)
    return {name: task.metric_sums(outputs[name], batch) for name, task in task_objs.items()}

  def predict_step(state: ForwardState, batch):
    outputs = forward(state, batch)
    return task_objs["depth"].predict_metres(outputs["depth"])

  rep, data = data_parallel.replicated(mesh), data_parallel.batch_sharding(mesh)
  steps = Steps(
      eval_graph=eval_graph, forward=forward, tasks=task_objs,
      train_step=xla_options.jit(train_step, mesh, xla_options.TRAIN,
                                 in_shardings=(rep, data), out_shardings=(rep, rep),
                                 donate_argnums=0),
      eval_step=ForwardStep(eval_step, mesh, out_shardings=rep),
      predict_step=ForwardStep(predict_step, mesh, out_shardings=data),
  )
  return steps, data_parallel.replicate(state, mesh)


# ------------------------------------------------------------- compiling ahead of the data

# One example's arrays as the input pipeline yields them (the builder's features;
# smd_jax/data/batching.py `train_dataset`): key -> (dimensions after H, W; dtype).
EXAMPLE_ARRAYS = {"image": ((3,), np.uint8), "depth": ((), np.float32),
                  "semantic": ((), np.int16)}


def abstract_batch(resolution: int, global_batch_size: int, mesh: Mesh, *,
                   padded: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and shardings of a global batch at `resolution`; `padded`: an
  evaluation batch, whose `mask` marks the real examples (`batching.pad_batch`)."""
  sharding = data_parallel.batch_sharding(mesh)
  lead = (global_batch_size, resolution, resolution)
  out = {k: jax.ShapeDtypeStruct(lead + rest, dtype, sharding=sharding)
         for k, (rest, dtype) in EXAMPLE_ARRAYS.items()}
  if padded:
    out["mask"] = jax.ShapeDtypeStruct((global_batch_size,), np.bool_, sharding=sharding)
  return out


def abstract(tree: Any) -> Any:
  """The shapes, dtypes, weak types and shardings of a tree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding, weak_type=x.aval.weak_type), tree)


class CompileAhead:
  """Compiles jitted functions for given abstract arguments on a background thread.

  `jax.jit(f).lower(*args).compile()` fills the cache that a later call `f(*args)`
  with the same shapes, dtypes and shardings uses: that call does not compile
  again (tests/test_train.py counts XLA's compilations). So the steps can compile
  while the data are being made. Tracing and lowering run here, on the caller's
  thread: they import JAX modules on first use, and two threads importing at once
  can each get the other's modules half initialised (seen: "No module named
  'jax._src.state.types.TransformedRef'"); XLA's compilation, on the thread,
  imports nothing. `wait` joins the thread and re-raises the first failure on the
  caller's thread. Used as a context manager, an exception in the block waits for
  the thread before it propagates: a process that exits while a thread is inside
  XLA's compiler aborts (so the thread is not a daemon either).
  """

  def __init__(self, jobs: list[tuple[str, Callable, tuple]]):
    self.seconds: dict[str, float] = {}  # name -> compile time, s
    self._error: tuple[str, BaseException] | None = None
    lowered = [(name, fn.lower(*args)) for name, fn, args in jobs]
    self._thread = threading.Thread(target=self._compile, args=(lowered,),
                                    name="smd-compile-ahead")
    self._thread.start()

  def _compile(self, lowered) -> None:
    for name, program in lowered:
      start = time.perf_counter()
      try:
        program.compile()
      except BaseException as e:  # pylint: disable=broad-except  (re-raised by `wait`)
        self._error = (name, e)
        return
      self.seconds[name] = time.perf_counter() - start

  def wait(self) -> dict[str, float]:
    """Blocks until every function is compiled; raises what a compilation raised."""
    self._thread.join()
    if self._error is not None:
      name, error = self._error
      logging.error("Compiling %s ahead of the data failed: %s", name, error)
      raise error
    return self.seconds

  def __enter__(self) -> "CompileAhead":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None and self._thread.is_alive():
      logging.info("Waiting for the compilation started ahead of the data to end.")
      self._thread.join()
