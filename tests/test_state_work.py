"""Forward programs split into per-state and per-batch work (smd_jax/training/state_work.py,
steps.ForwardStep): what moves, that the two halves compute what the whole does, and
that the per-state half runs once per state and again for a new one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core

from smd_jax.training import data_parallel, state_work, steps as steps_lib
from tests import test_no_recompile
from tests.test_no_recompile import batch_of, tiny_config

toy_encoder = test_no_recompile.toy_encoder  # the fixture, for the UNet test below


OFFSET = np.linspace(-1.0, 1.0, 20, dtype=np.float32).reshape(5, 4)


def forward(state, batch):
  """A forward pass with work of each kind: a kernel fold that reads the state only (it
  moves), a per-channel bias broadcast to the batch's shape (larger than what it reads:
  it stays), a `zeros` of the batch's shape and work on a constant alone (they stay)."""
  kernel = state.params["w"][0] + state.params["w"][1]  # [C, D], from the state only
  bias = jnp.broadcast_to(state.model_state["b"], batch["x"].shape[:-1] + (kernel.shape[1],))
  zeros = jnp.zeros(bias.shape, bias.dtype)
  return {"y": batch["x"] @ kernel + bias + zeros + jnp.asarray(OFFSET) * 0.5}


def numbers(batch_size=8, seed=0):
  rng = np.random.default_rng(seed)
  state = steps_lib.ForwardState(params={"w": rng.normal(size=(2, 3, 4)).astype(np.float32)},
                                 model_state={"b": rng.normal(size=(4,)).astype(np.float32)})
  batch = {"x": rng.normal(size=(batch_size, 5, 3)).astype(np.float32)}
  return state, batch


def expected(state, batch):
  """NumPy: x (w0 + w1) + b + OFFSET / 2."""
  w = np.asarray(state.params["w"], np.float64)
  return (np.asarray(batch["x"], np.float64) @ (w[0] + w[1])
          + np.asarray(state.model_state["b"]) + OFFSET / 2)


def test_split_moves_state_work_and_keeps_batch_shaped_values_with_the_batch():
  state, batch = numbers()
  closed = jax.make_jaxpr(forward)(state, batch)
  num_state = len(jax.tree.leaves(state))
  cut = state_work.split(closed, num_state)
  assert cut is not None
  # Prepared: the folded kernel only; nothing of the batch's shape (the broadcast
  # bias and the zeros stay in the per-batch program, where XLA fuses them), nor the
  # constant's work (XLA can fold it there).
  assert [tuple(a.shape) for a in cut.prepare.out_avals] == [(3, 4)]
  assert "add" in {e.primitive.name for e in cut.prepare.jaxpr.eqns}
  apply_primitives = {e.primitive.name for e in cut.apply.jaxpr.eqns}
  assert {"dot_general", "broadcast_in_dim"} <= apply_primitives
  # The per-batch program still reads the bias from the state, not the fold's input.
  leaves = jax.tree.leaves(state)
  assert [leaves[i].shape for i in cut.passed] == [(4,)]
  # Each part names its arguments, as JAX asks of every jaxpr: the state's leaves, then
  # the prepared values, then the batch.
  assert cut.prepare.jaxpr.debug_info.arg_names == closed.jaxpr.debug_info.arg_names[:2]
  assert cut.apply.jaxpr.debug_info.arg_names == (
      closed.jaxpr.debug_info.arg_names[1], "prepared", *closed.jaxpr.debug_info.arg_names[2:])
  prepared = core.jaxpr_as_fun(cut.prepare)(*leaves)
  (y,) = core.jaxpr_as_fun(cut.apply)(*[leaves[i] for i in cut.passed], *prepared,
                                      *jax.tree.leaves(batch))
  np.testing.assert_allclose(y, expected(state, batch), rtol=1e-5, atol=1e-5)


def test_nothing_to_move_and_effects_give_no_split():
  state, batch = numbers()
  num_state = len(jax.tree.leaves(state))
  plain = jax.make_jaxpr(lambda s, b: {"y": b["x"] * 2.0})(state, batch)
  assert state_work.split(plain, num_state) is None

  def printing(state, batch):
    jax.debug.print("{}", state.params["w"][0, 0, 0])
    return forward(state, batch)

  assert state_work.split(jax.make_jaxpr(printing)(state, batch), num_state) is None


class _Counting:
  """Wraps a jitted function and counts its calls."""

  def __init__(self, fn):
    self.fn, self.calls = fn, 0

  def __call__(self, *args):
    self.calls += 1
    return self.fn(*args)


def test_forward_step_prepares_once_per_state_on_the_8_device_mesh():
  mesh = data_parallel.make_mesh()  # the suite's 8 simulated devices: batch sharded
  step = steps_lib.ForwardStep(forward, mesh, out_shardings=data_parallel.batch_sharding(mesh))
  state, batch = numbers()
  state = data_parallel.replicate(state, mesh)
  global_batch = data_parallel.to_global(batch, mesh)
  y = step(state, global_batch)["y"]
  np.testing.assert_allclose(data_parallel.fetch(y), expected(state, batch), rtol=1e-5,
                             atol=1e-5)
  (programs,) = step._programs.values()  # pylint: disable=protected-access
  counting = _Counting(programs.prepare)
  object.__setattr__(programs, "prepare", counting)
  for seed in (1, 2):  # new batches, the same state: nothing prepared again
    _, other = numbers(seed=seed)
    y = step(state, data_parallel.to_global(other, mesh))["y"]
    np.testing.assert_allclose(data_parallel.fetch(y), expected(state, other), rtol=1e-5,
                               atol=1e-5)
  assert counting.calls == 0
  new_state = data_parallel.replicate(numbers(seed=3)[0], mesh)  # e.g. after a train step
  y = step(new_state, global_batch)["y"]
  np.testing.assert_allclose(data_parallel.fetch(y), expected(new_state, batch), rtol=1e-5,
                             atol=1e-5)
  assert counting.calls == 1
  object.__setattr__(programs, "prepare", counting.fn)
  assert step.cache_sizes() == {"whole": 0, "prepare": 1, "apply": 1}


def test_batch_shapes_in_turn_prepare_once_each():
  # Prediction of photos of two sizes in turn: each shape's values are kept.
  mesh = data_parallel.make_mesh(1)
  step = steps_lib.ForwardStep(forward, mesh, out_shardings=data_parallel.replicated(mesh))
  state, _ = numbers()
  batches = [numbers(batch_size=2, seed=1)[1], numbers(batch_size=4, seed=2)[1]]
  for batch in batches:
    step(state, batch)
  programs_made = list(step._programs.values())  # pylint: disable=protected-access
  counters = [_Counting(p.prepare) for p in programs_made]
  for programs, counting in zip(programs_made, counters):
    object.__setattr__(programs, "prepare", counting)
  for _ in range(3):
    for batch in batches:
      np.testing.assert_allclose(step(state, batch)["y"], expected(state, batch), rtol=1e-5,
                                 atol=1e-5)
  assert [c.calls for c in counters] == [0, 0]


def test_split_off_runs_the_whole_program(monkeypatch):
  monkeypatch.setenv("SMD_SPLIT_FORWARD", "0")
  mesh = data_parallel.make_mesh(1)
  step = steps_lib.ForwardStep(forward, mesh, out_shardings=data_parallel.replicated(mesh))
  state, batch = numbers(batch_size=2)
  np.testing.assert_allclose(step(state, batch)["y"], expected(state, batch), rtol=1e-5,
                             atol=1e-5)
  assert step.cache_sizes() == {"whole": 1}


@pytest.mark.usefixtures("toy_encoder")
@pytest.mark.parametrize("program", ["eval_step", "predict_step"])
def test_a_unet_forward_step_equals_its_whole_program(program):
  # A toy-encoder UNet with the paper's semantic head, on the CPU (the decoder's
  # sub-pixel convolutions, whose kernel folds move to the per-state program).
  config = tiny_config(batch_size=2)
  mesh = data_parallel.make_mesh(1)
  steps, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0),
                                       total_steps=10, mesh=mesh)
  step = getattr(steps, program)
  batch = data_parallel.to_global({**batch_of(0, n=2), "mask": np.ones(2, bool)}, mesh)
  lowered = step.lower(state, batch)
  assert len(lowered.prepare.out_info) > 0  # something moved
  split = step(state, batch)
  whole = step.jitted(steps_lib.ForwardState(state.params, state.model_state), batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               split, whole)
