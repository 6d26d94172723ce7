"""Forward programs that do their parameters-only work once per state, not once per batch.

Part of a forward pass reads the parameters and model state only: the UNet decoder's
sub-pixel kernel folds (`conv_formulations.upsampled_conv3x3`), the kernel slices around
them, BatchNorm's per-channel scale. Over an evaluation pass the state is fixed, yet
a jitted eval step redoes that work for every batch: for the EfficientNet-b4 UNet at
2x256x256 on the CPU, 119 of its instructions, ~7% of the step (docs/benchmarks.md).

`split` sorts the equations of a traced forward program (arguments: the state's
leaves, then the batch's) into a *prepare* program of the state alone and an *apply*
program of the prepared values, the state leaves it still reads, and the batch.
An equation goes to *prepare* when every argument is already there (state, prepared
or a constant), at least one comes from the state (work on constants alone stays with
the batch, where XLA can fold it) and its result is no larger than its arguments (a
broadcast of a per-channel vector to an activation's shape, or a `zeros` of it, would
only add memory traffic to the batch program, where XLA fuses it into its consumer).
Effects are never moved. `SplitPrograms` jits the two halves of a forward program
(`steps.ForwardStep` calls them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend import core
from jax.sharding import Mesh

from smd_jax.training import data_parallel, xla_options


@dataclasses.dataclass(frozen=True)
class Split:
  """A forward program cut in two (`split`)."""

  prepare: core.ClosedJaxpr  # (*state leaves) -> prepared values
  apply: core.ClosedJaxpr  # (*passed state leaves, *prepared values, *batch leaves) -> outputs
  passed: tuple[int, ...]  # the state leaves `apply` reads, as indices into the state's


def _size(var) -> int:
  return math.prod(getattr(var.aval, "shape", ()))


def _is_var(atom) -> bool:
  return not isinstance(atom, core.Literal)


def _hoistable(eqn, from_state: set, consts: set) -> bool:
  """The module docstring's rule (`split` has turned away programs with effects)."""
  args = [v for v in eqn.invars if _is_var(v)]
  return (bool(args) and all(v in from_state or v in consts for v in args)
          and any(v in from_state for v in args)
          and sum(_size(v) for v in eqn.outvars) <= sum(_size(v) for v in args))


def split(closed: core.ClosedJaxpr, num_state: int) -> Split | None:
  """Cuts `closed`, whose first `num_state` arguments are the state's leaves, into a
  prepare and an apply program (module docstring); None when there is nothing to
  move (or the program has effects)."""
  jaxpr = closed.jaxpr
  if jaxpr.effects:
    return None
  state_vars = list(jaxpr.invars[:num_state])
  from_state = set(state_vars)  # values that the state alone determines
  consts = set(jaxpr.constvars)
  prepare_eqns, apply_eqns = [], []
  for eqn in jaxpr.eqns:
    if _hoistable(eqn, from_state, consts):
      prepare_eqns.append(eqn)
      from_state.update(v for v in eqn.outvars if not isinstance(v, core.DropVar))
    else:
      apply_eqns.append(eqn)
  # What `apply` reads of the state side, in first-use order.
  needed, seen = [], set()
  for atom in [v for e in apply_eqns for v in e.invars] + list(jaxpr.outvars):
    if _is_var(atom) and atom in from_state and atom not in seen:
      seen.add(atom)
      needed.append(atom)
  state_index = {v: i for i, v in enumerate(state_vars)}
  passed = [v for v in needed if v in state_index]
  prepared = [v for v in needed if v not in state_index]
  if not prepared:
    return None
  # Each part names its arguments (JAX deprecates jaxprs without debug info); `apply`
  # returns what the whole program returns, so it keeps the result paths.
  debug = jaxpr.debug_info
  names = debug.arg_names or ("",) * len(jaxpr.invars)
  prepare = core.Jaxpr(jaxpr.constvars, state_vars, prepared, prepare_eqns,
                       debug_info=debug._replace(arg_names=names[:num_state],
                                                 result_paths=None))
  apply_names = (tuple(names[state_index[v]] for v in passed) + ("prepared",) * len(prepared)
                 + tuple(names[num_state:]))
  apply = core.Jaxpr(jaxpr.constvars, passed + prepared + list(jaxpr.invars[num_state:]),
                     jaxpr.outvars, apply_eqns,
                     debug_info=debug._replace(arg_names=apply_names))
  return Split(prepare=core.ClosedJaxpr(prepare, closed.consts),
               apply=core.ClosedJaxpr(apply, closed.consts),
               passed=tuple(state_index[v] for v in passed))


def signature(leaves) -> tuple:
  """Shapes and dtypes of arrays (or abstract values): what a program is compiled for."""
  return tuple((x.shape, x.dtype) for x in leaves)


@dataclasses.dataclass(frozen=True)
class StateSeen:
  """A state a `steps.ForwardStep` was called with: its leaves, their signature, the
  split programs found for each batch signature, and what their `prepare` made of it."""

  params: Any
  model_state: Any
  leaves: list
  signature: tuple
  programs: dict = dataclasses.field(default_factory=dict)  # batch signature -> programs
  prepared: dict = dataclasses.field(default_factory=dict)  # programs -> prepared values


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a cache key
class SplitPrograms:
  """The two jitted halves of a `steps.ForwardStep` for one argument signature."""

  prepare: Callable  # (state leaves) -> prepared values, replicated
  apply: Callable  # (passed state leaves, prepared values, batch) -> outputs
  passed: tuple[int, ...]  # which state leaves `apply` reads
  prepared: tuple[jax.ShapeDtypeStruct, ...]  # what `prepare` returns

  @classmethod
  def build(cls, jitted, forward_state, batch, *, mesh: Mesh, out_shardings: Any
            ) -> "SplitPrograms | None":
    """Traces `jitted` (a forward program of (ForwardState, batch)) and jits its two
    halves with the same compiler options; None if nothing moves to `prepare`."""
    traced = jitted.trace(forward_state, batch)
    cut = split(traced.jaxpr, len(jax.tree.leaves(forward_state)))
    if cut is None:
      return None
    prepare_fn, apply_fn = core.jaxpr_as_fun(cut.prepare), core.jaxpr_as_fun(cut.apply)

    def prepare(leaves):
      return prepare_fn(*leaves)

    def apply(passed, prepared, batch):
      return jax.tree.unflatten(traced.out_tree,
                                apply_fn(*passed, *prepared, *jax.tree.leaves(batch)))

    # Named after the program, as XLA's compile log shows it: "eval_step_apply".
    name = getattr(jitted, "__name__", "forward")
    prepare.__name__, apply.__name__ = f"{name}_prepare", f"{name}_apply"
    rep = data_parallel.replicated(mesh)
    return cls(
        prepare=xla_options.jit(prepare, mesh, xla_options.FORWARD,
                                in_shardings=(rep,), out_shardings=rep),
        apply=xla_options.jit(apply, mesh, xla_options.FORWARD,
                              in_shardings=(rep, rep, data_parallel.batch_sharding(mesh)),
                              out_shardings=out_shardings),
        passed=cut.passed,
        prepared=tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep)
                       for a in cut.prepare.out_avals))

  def lower(self, forward_state, batch) -> "SplitLowered":
    leaves = jax.tree.leaves(forward_state)
    return SplitLowered(self.prepare.lower(leaves),
                        self.apply.lower([leaves[i] for i in self.passed],
                                         list(self.prepared), batch))


@dataclasses.dataclass(frozen=True)
class SplitLowered:
  """Both halves lowered; `compile` compiles both (filling the caches the calls use)
  and returns the per-batch program, the one worth reading."""

  prepare: Any
  apply: Any

  def compile(self):
    self.prepare.compile()
    return self.apply.compile()

  def as_text(self) -> str:
    return self.apply.as_text()
