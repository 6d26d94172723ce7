"""Micro-benchmarks of alternative formulations of the step's hot operations.

    python -m benchmarks.ops [--repeats 5]

Forward + backward (gradient w.r.t. input and kernel) of one layer, jitted, median of
`--repeats` calls, on EfficientNet-b4 UNet shapes at batch 8, 64x64 input (the demo):

* 1x1 convolution: XLA's convolution vs the same contraction as `dot_general`;
* depthwise convolution: XLA's grouped convolution vs `layers.depthwise_conv_taps`;
* BatchNorm statistics: E[x], E[x^2] in two reductions (ours) vs mean then centred
  variance (two passes over x).

Each pair is also checked equal (printed max |difference|). Markdown on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from smd_jax.models import layers

DN = ('NHWC', 'HWIO', 'NHWC')


def conv_native(x, w, stride=1, groups=1, pad=0):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=DN, feature_group_count=groups)


def conv1x1_dot(x, w):
  return jax.lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())))


def depthwise_taps(x, w, stride=1, pad=0):
  return layers.depthwise_conv_taps(x, w, (stride, stride), ((pad, pad), (pad, pad)))


def bn_stats_moments(x):
  mean = jnp.mean(x, (0, 1, 2))
  return mean, jnp.maximum(jnp.mean(jnp.square(x), (0, 1, 2)) - jnp.square(mean), 0.0)


def bn_stats_centred(x):
  mean = jnp.mean(x, (0, 1, 2))
  return mean, jnp.mean(jnp.square(x - mean), (0, 1, 2))


def time_pair(name, fns, args, repeats):
  """Median seconds of forward+backward for each formulation, and their max diff."""
  results = []
  for fn in fns:
    grad = jax.jit(jax.grad(lambda *a, fn=fn: _scalar(fn(*a)), argnums=tuple(range(len(args)))))
    jax.block_until_ready(grad(*args))
    t = timing.repeat(lambda grad=grad: jax.block_until_ready(grad(*args)), repeats=repeats,
                      warmup=1, items=1)
    results.append((t.median_s, jax.jit(fn)(*args)))
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])))
  return name, results[0][0], results[1][0], diff


def _scalar(out):
  return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--batch-size', type=int, default=8)
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  b = args.batch_size
  r = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  rows = []
  # (H, W, Cin, Cout) of b4 1x1 convs at a 64x64 input: expand / project / decoder-ish.
  for h, cin, cout in ((32, 24, 144), (16, 192, 32), (8, 336, 56), (4, 960, 160),
                       (2, 2688, 448)):
    rows.append(time_pair(f'1x1 conv ({b},{h},{h},{cin})->{cout}: native \\| dot_general',
                          (conv_native, conv1x1_dot), (r(b, h, h, cin), r(1, 1, cin, cout)),
                          args.repeats))
  for h, c, k, s in ((32, 144, 3, 1), (16, 336, 5, 1), (32, 144, 3, 2), (4, 1632, 5, 1)):
    fn_native = lambda x, w, k=k, s=s, c=c: conv_native(x, w, s, c, (k - 1) // 2)
    fn_taps = lambda x, w, k=k, s=s: depthwise_taps(x, w, s, (k - 1) // 2)
    rows.append(time_pair(f'depthwise ({b},{h},{h},{c}) k{k} s{s}: native \\| taps',
                          (fn_native, fn_taps), (r(b, h, h, c), r(k, k, 1, c)), args.repeats))
  for h, c in ((32, 144), (16, 336), (64, 16)):
    rows.append(time_pair(f'BN statistics ({b},{h},{h},{c}): E[x^2]-E[x]^2 \\| centred',
                          (bn_stats_moments, bn_stats_centred), (r(b, h, h, c) + 1.0,),
                          args.repeats))
  print(f'backend {jax.default_backend()}, load {timing.load_average()}, '
        f'median of {args.repeats}, forward + backward\n')
  print('| operation: A \\| B | A (ms) | B (ms) | B / A | max abs diff |')
  print('| --- | ---: | ---: | ---: | ---: |')
  for name, a, bt, diff in rows:
    print(f'| {name} | {1e3 * a:.2f} | {1e3 * bt:.2f} | {bt / a:.2f} | {diff:.1e} |')
  return 0


if __name__ == '__main__':
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  sys.exit(main())
