"""The benchmark harness: timing statistics, tables, the profiler's HLO join, the
pipeline's tiled source, and the PyTorch side's loss against ours."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flax_side, pipeline, profile_step, run, timing
from smd_jax.training import steps as steps_lib


def test_repeat_times_only_the_timed_calls():
  calls = []
  t = timing.repeat(lambda: calls.append(1), repeats=5, warmup=2, items=8)
  assert len(calls) == 7 and len(t.times) == 5
  t = timing.Timing([3.0, 1.0, 2.0], items=8)
  assert t.median_s == 2.0 and t.per_s == 4.0 and t.spread == 1.0
  with pytest.raises(ValueError):
    timing.repeat(lambda: None, repeats=0, warmup=0, items=1)


def test_model_table_pairs_sides_and_prints_ratios():
  common = dict(model='unet', precision='f32', batch_size=8, size=128)
  rows = [dict(side='flax', train_images_per_s=12.0, eval_images_per_s=30.0,
               train_compile_s=70.0, eval_compile_s=20.0, load=2.0, **common),
          dict(side='torch', train_images_per_s=4.0, eval_images_per_s=20.0,
               train_compile_s=5.0, eval_compile_s=1.0, load=2.5, **common)]
  table = run.model_table(rows)
  assert table.count('\n') == 2  # header, separator, one row
  row = table.splitlines()[-1]
  assert '| 3.00x |' in row and '| 1.50x |' in row and '2.00/2.50' in row
  assert '–' in run.model_table(rows[:1])  # no reference: no ratio


def test_quick_defaults_and_explicit_options():
  args = run.parse_args(['--quick'])
  assert (args.models, args.batch_size, args.size, args.repeats) == (['unet'], 2, 64, 3)
  assert 'scaling' not in args.only
  args = run.parse_args(['--quick', '--size', '96', '--scaling'])
  assert args.size == 96 and 'scaling' in args.only


def test_profile_join_categorizes_a_real_program():
  def f(x, w1, w3):
    y = jax.lax.conv_general_dilated(x, w1, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = jax.lax.conv_general_dilated(y, w3, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.mean(jnp.tanh(y))

  args = (jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 8)), jnp.ones((3, 3, 8, 8)))
  compiled = jax.jit(jax.grad(f, argnums=(1, 2))).lower(*args).compile()
  instructions, computations = profile_step.parse_hlo(compiled.as_text())
  categories = {profile_step.categorize(line, computations) for line in instructions.values()}
  assert 'forward: conv kxk' in categories, categories
  # XLA:CPU turns a 1x1 convolution into a dot; other backends may keep the conv.
  assert categories & {'forward: conv 1x1',
                       'forward: dot (1x1 convs: XLA rewrites them as dots)'}, categories
  assert any(c.startswith('backward: conv') for c in categories), categories


def test_tiled_source_repeats_examples():
  tiled = pipeline.Tiled(['a', 'b', 'c'], 7)
  assert len(tiled) == 7 and [tiled[i] for i in range(7)] == list('abcabca')


def test_torch_loss_equals_our_loss():
  """Both sides optimise the same objective: the PyTorch side's masked L1 on sigmoid
  depth + 0.07 CE equals steps.total_loss of the 2-head config on the same logits."""
  torch = pytest.importorskip('torch')
  from benchmarks import torch_side
  from smd_jax import tasks as tasks_lib

  batch = flax_side.random_batch(2, 8, seed=3)
  rng = np.random.default_rng(0)
  depth_logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  sem_logits = rng.normal(size=(2, 8, 8, 40)).astype(np.float32)
  config = flax_side.make_config('unet_2head', encoder='efficientnet_b4', batch_size=2, size=8,
                                 precision='f32')
  task_objs = tasks_lib.build_tasks(config.tasks)
  ours, _ = steps_lib.total_loss(
      {'depth': jax.nn.sigmoid(depth_logits), 'semantic': jnp.asarray(sem_logits)},
      {k: jnp.asarray(v) for k, v in batch.items()}, task_objs, config.tasks)
  theirs = torch_side.reference_loss(
      torch, {'depth': torch.from_numpy(depth_logits.transpose(0, 3, 1, 2)),
              'semantic': torch.from_numpy(sem_logits.transpose(0, 3, 1, 2))},
      torch.from_numpy(batch['depth']), torch.from_numpy(batch['semantic'].astype(np.int64)))
  assert math.isclose(float(ours), float(theirs), rel_tol=1e-5)
