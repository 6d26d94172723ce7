"""Orbax round trip of the train state and the grain iterator position."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from smd_jax.training import checkpoints, steps


class Tiny(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.linear(x))


def make_state(seed):
  model = Tiny(nnx.Rngs(seed))
  model(jnp.arange(6.0).reshape(2, 3) * (seed + 1))  # move BN statistics off their init
  _, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-3)
  return steps.TrainState(step=jnp.asarray(7 + seed, jnp.int32), params=params, model_state=rest,
                          opt_state=tx.init(params))


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_round_trip_state_and_data_iterator(tmp_path):
  ds = grain.MapDataset.source(list(range(20))).shuffle(seed=0).repeat().batch(3).to_iter_dataset()
  it = iter(ds)
  for _ in range(4):
    next(it)
  saved = make_state(0)
  ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
  assert ckpt.save(7, saved, it)
  ckpt.close()
  want_next = [next(it).tolist() for _ in range(3)]

  # A new process would start from a fresh state and a fresh iterator.
  other = make_state(1)
  assert not leaves_equal(saved, other)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 7
  fresh_it = iter(ds)
  restored, step = ckpt.restore(other, fresh_it)
  ckpt.close()
  assert step == 7
  assert leaves_equal(restored, saved)
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  assert [next(fresh_it).tolist() for _ in range(3)] == want_next


def test_keeps_last_n_and_respects_interval(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2, save_interval_steps=5)
  state = make_state(0)
  saved = [s for s in range(1, 21) if ckpt.save(s, state)]
  ckpt.wait()
  assert saved == [5, 10, 15, 20]
  assert ckpt.all_steps() == [15, 20]
  assert ckpt.save(21, state, force=True)
  ckpt.close()
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 21


def test_restore_without_checkpoint_is_clear(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  try:
    ckpt.restore(make_state(0))
  except FileNotFoundError as e:
    assert "No checkpoint" in str(e)
  else:
    raise AssertionError("expected FileNotFoundError")
