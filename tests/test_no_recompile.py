"""The jitted train and eval steps compile once and never again: across steps, with
the state they return fed back in (donated buffers), and for the padded last batch
of an evaluation pass.

Checked two ways: the jitted functions' own cache sizes, and JAX's compile log
(`jax_log_compiles`) captured over the steps after the first ones.
"""

import contextlib
import logging

import jax
import numpy as np
import pytest

from configs import base

from smd_jax.evaluation import passes
from smd_jax.models import registry
from smd_jax.training import data_parallel, steps as steps_lib
from tests.test_paper_configs import ToyEncoder, batch_of


def tiny_config(dtype="float32", batch_size=8, size=32, semantic_head=True):
  """The paper setup (depth L1 [+ semantic CE]) on a toy encoder, 32x32."""
  config = base.get_config()
  if semantic_head:
    base.add_semantic_head(config)
  config.model.encoder = "toy"
  config.model.dtype = dtype
  with config.model.unlocked():
    config.model.decoder_channels = (16, 8, 8, 8, 8)
  config.data.resolution = size
  config.batch_size = config.eval_batch_size = batch_size
  return config


@pytest.fixture
def toy_encoder(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, "toy", ToyEncoder)


class _CompileLog(logging.Handler):
  """Collects JAX's 'Compiling <name> ...' log lines."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.names = []

  def emit(self, record):
    message = record.getMessage()
    if "Compiling" in message or "compiling" in message:
      self.names.append(message)


@contextlib.contextmanager
def compile_log():
  handler = _CompileLog()
  loggers = [logging.getLogger(n) for n in ("jax._src.interpreters.pxla", "jax._src.dispatch",
                                            "jax")]
  old = [(lg.level, lg.propagate) for lg in loggers]
  for lg in loggers:
    lg.addHandler(handler)
    lg.setLevel(logging.DEBUG)
  with jax.log_compiles(True):
    try:
      yield handler.names
    finally:
      for lg, (level, _) in zip(loggers, old):
        lg.removeHandler(handler)
        lg.setLevel(level)


def fake_source(n, size=32):
  """Examples like a TFDS source gives them (one per row of `batch_of`)."""
  batch = batch_of(1, size=size, n=n)
  return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def test_log_capture_sees_a_compile():
  # Guards the test below: if the log format changed, this one fails instead of
  # the no-recompile test passing vacuously.
  with compile_log() as names:
    jax.jit(lambda x: x * 3 + 1)(np.arange(5.0)).block_until_ready()
  assert any("<lambda>" in n for n in names), names


def test_train_and_eval_steps_compile_once(toy_encoder):
  config = tiny_config(semantic_head=False)  # one head: half the compile time
  mesh = data_parallel.make_mesh()  # the 8 simulated devices: batches sharded, as in training
  model = steps_lib.create_model(config, 0)
  steps, state = steps_lib.build_steps(config, model, total_steps=10, mesh=mesh)
  train = lambda state, seed: steps.train_step(state, data_parallel.to_global(batch_of(seed, n=8), mesh))
  source = fake_source(11)  # 11 = 8 + 3: the second eval batch is padded (mask False x 5)
  state, _ = train(state, 0)  # first calls compile
  passes.evaluate(steps, state, source, global_batch_size=8, mesh=mesh)

  with compile_log() as names:
    for seed in range(1, 4):
      state, metrics = train(state, seed)
      assert np.isfinite(float(metrics["loss"]))
    results = passes.evaluate(steps, state, source, global_batch_size=8, mesh=mesh)
    jax.block_until_ready(state)
  assert np.isfinite(results["depth/rmse"])
  step_compiles = [n for n in names if "train_step" in n or "eval_step" in n]
  assert step_compiles == []
  assert int(state.step) == 4
  assert steps.train_step._cache_size() == 1  # pylint: disable=protected-access
  # The eval step runs as its two halves (steps.ForwardStep), each compiled once.
  assert steps.eval_step.cache_sizes() == {"whole": 0, "prepare": 1, "apply": 1}


def test_forward_steps_take_no_optimizer_state(toy_encoder):
  # The eval and predict programs get the params and model state only: every leaf
  # handed to a jitted call costs argument handling, and the Adam moments are most of
  # the state's leaves.
  config = tiny_config(semantic_head=False)
  mesh = data_parallel.make_mesh()
  steps, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0),
                                       total_steps=10, mesh=mesh)
  batch = data_parallel.to_global(batch_of(0, n=8), mesh)
  state_leaves = len(jax.tree.leaves((state.params, state.model_state)))
  assert len(jax.tree.leaves(state.opt_state)) > len(jax.tree.leaves(state.params))
  for step in (steps.eval_step, steps.predict_step):
    # Two programs (steps.ForwardStep): the per-state one reads the state, the
    # per-batch one only what it still needs of that and what the first one made.
    assert len(jax.tree.leaves(step.lower(state, batch).prepare.args_info)) == state_leaves
