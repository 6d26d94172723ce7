"""Micro-benchmarks of alternative formulations of the step's hot operations.

    python -m benchmarks.ops [--repeats 5] [--batch_size 8]
        [--groups 1x1 depthwise depthwise_vjp bn kxk kxk_dots]
        [--unet_inputs 8x64 2x256]

Forward + backward (gradient w.r.t. input and kernel) of one layer, jitted, median of
`--repeats` calls (A and B interleaved: A, B, A, B, ...), on EfficientNet-b4 UNet
shapes at batch 8, 64x64 input (the demo):

* 1x1 convolution: XLA's convolution vs the same contraction as `dot_general`;
* depthwise convolution: XLA's grouped convolution vs
  `conv_formulations.depthwise_conv_taps`;
* depthwise_vjp: every distinct depthwise convolution of the b4 UNet's encoder at the
  `--unet_inputs` (batch x size, traced from the model itself: shape, stride,
  dilation, padding, how many layers share it), `conv_formulations.depthwise_conv_taps`
  with autodiff's gradient vs the same taps with the hand-written one
  (`conv_formulations.depthwise_conv_vjp`), and a total over all layers (time x count);
* BatchNorm statistics: E[x], E[x^2] in two reductions (ours) vs mean then centred
  variance (two passes over x);
* 3x3 convolution (UNet decoder shapes): XLA's convolution vs im2col (nine shifted
  slices concatenated, one dot) and vs XLA's forward with the kernel gradient as nine
  dots over batch and space (`custom_vjp`, no transposes);
* kxk_dots: every distinct stride-1 kxk convolution of the b4 UNet at the
  `--unet_inputs` (decoder and heads, traced from the model), XLA's convolution vs
  `conv_formulations.kxk_conv_dots_vjp` (kernel gradient as k*k dots), and a total;
* atrous 3x3 (DeepLabV3's ASPP on an 8x8 map): XLA's convolution with the full kernel
  vs `conv_formulations.conv_general_dilated`, which drops the taps that read only
  padding.

Each pair is also checked equal (printed max |difference|). Markdown on stdout.
"""

from __future__ import annotations

import collections
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from smd_jax import cli

from benchmarks import timing
from smd_jax.models import conv_formulations

DN = ("NHWC", "HWIO", "NHWC")


def conv_native(x, w, stride=1, groups=1, pad=0):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=DN, feature_group_count=groups)


def conv1x1_dot(x, w):
  return jax.lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())))


def depthwise_taps(x, w, stride=1, pad=0):
  return conv_formulations.depthwise_conv_taps(x, w, (stride, stride), ((pad, pad), (pad, pad)))


def _trace_unet(batch_size: int, size: int) -> None:
  """Traces the EfficientNet-b4 UNet (the paper's base config) abstractly (no compile)
  at a [batch_size, size, size, 3] input, for the recording hooks below."""
  from benchmarks import flax_side  # pylint: disable=g-import-not-at-top
  from smd_jax.models import build_model  # pylint: disable=g-import-not-at-top
  config = flax_side.make_config("unet", encoder="efficientnet_b4", batch_size=batch_size,
                                 size=size, precision="f32")
  model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  in_channels = config.model.get("in_channels", 3)
  jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                 jax.ShapeDtypeStruct((batch_size, size, size, in_channels), jnp.float32))


def unet_depthwise_layers(batch_size: int, size: int) -> collections.Counter:
  """The depthwise convolutions of the b4 UNet at a [batch_size, size, size, 3] input,
  as `conv_general_dilated` hands them to the taps (after dead taps are dropped):
  {(x shape, kernel shape, strides, padding, dilation): number of layers}."""
  found = collections.Counter()
  taps, use_vjp = conv_formulations.depthwise_conv_taps, conv_formulations.depthwise_vjp

  def record(x, w, strides, padding, dilation=(1, 1)):
    found[(tuple(x.shape), tuple(w.shape), tuple(strides), tuple(map(tuple, padding)),
           tuple(dilation))] += 1
    return taps(x, w, strides, padding, dilation)

  conv_formulations.depthwise_conv_taps, conv_formulations.depthwise_vjp = record, False
  try:
    _trace_unet(batch_size, size)
  finally:
    conv_formulations.depthwise_conv_taps, conv_formulations.depthwise_vjp = taps, use_vjp
  return found


def unet_kxk_layers(batch_size: int, size: int) -> collections.Counter:
  """The stride-1, undilated, ungrouped kxk (k > 1) convolutions of the b4 UNet at a
  [batch_size, size, size, 3] input: {(x shape, kernel shape, padding): count}."""
  found = collections.Counter()
  choose = conv_formulations.conv_formulation

  def record(lhs_shape, rhs_shape, padding, **kwargs):
    if (kwargs.get("feature_group_count", 1) == 1 and max(rhs_shape[:2]) > 1
        and tuple(kwargs.get("window_strides", (1, 1))) == (1, 1)
        and tuple(kwargs.get("rhs_dilation") or (1, 1)) == (1, 1)):
      found[(tuple(lhs_shape), tuple(rhs_shape), tuple(map(tuple, padding)))] += 1
    return choose(lhs_shape, rhs_shape, padding, **kwargs)

  conv_formulations.conv_formulation = record
  try:
    _trace_unet(batch_size, size)
  finally:
    conv_formulations.conv_formulation = choose
  return found


def conv3x3_im2col(x, w):
  b, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], -1)
  return jax.lax.dot_general(cols, w.reshape(9 * c, -1), (((3,), (0,)), ((), ())))


@jax.custom_vjp
def conv3x3_dot_kernel_grad(x, w):
  return conv_native(x, w, pad=1)


def _dot_kernel_grad_fwd(x, w):
  return conv_native(x, w, pad=1), (x, w)


def _dot_kernel_grad_bwd(res, g):
  x, w = res
  gx, = jax.vjp(lambda x: conv_native(x, w, pad=1), x)[1](g)
  _, h, wd, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
  gw = jnp.stack([jnp.stack([jax.lax.dot_general(xp[:, i:i + h, j:j + wd], g, contract)
                             for j in range(3)]) for i in range(3)])
  return gx, gw


conv3x3_dot_kernel_grad.defvjp(_dot_kernel_grad_fwd, _dot_kernel_grad_bwd)


def atrous_full(x, w, rate):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((rate, rate), (rate, rate)),
                                      rhs_dilation=(rate, rate), dimension_numbers=DN)


def atrous_trimmed(x, w, rate):
  return conv_formulations.conv_general_dilated(
      x, w, (1, 1), ((rate, rate), (rate, rate)), rhs_dilation=(rate, rate),
      dimension_numbers=DN)


def bn_stats_moments(x):
  mean = jnp.mean(x, (0, 1, 2))
  return mean, jnp.maximum(jnp.mean(jnp.square(x), (0, 1, 2)) - jnp.square(mean), 0.0)


def bn_stats_centred(x):
  mean = jnp.mean(x, (0, 1, 2))
  return mean, jnp.mean(jnp.square(x - mean), (0, 1, 2))


def time_pair(name, fns, args, repeats):
  """Median seconds of forward+backward for each formulation, timed in alternation
  (`timing.interleave`: a change of machine load hits both alike), and the max |difference| of
  their values and of their gradients."""
  grads = [jax.jit(jax.grad(lambda *a, fn=fn: _scalar(fn(*a)), argnums=tuple(range(len(args)))))
           for fn in fns]
  outs = []
  for fn, grad in zip(fns, grads):
    outs.append((jax.jit(fn)(*args), jax.block_until_ready(grad(*args))))  # compile + warm-up
  timings = timing.interleave(
      {i: lambda grad=grad: jax.block_until_ready(grad(*args)) for i, grad in enumerate(grads)},
      repeats=repeats, warmup=0, items=1)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])))
  return name, timings[0].median_s, timings[1].median_s, diff


def _scalar(out):
  return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))


GROUPS = ("1x1", "depthwise", "depthwise_vjp", "bn", "kxk", "kxk_dots")
_UNET_INPUT = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the flags (absl; `--batch-size` and `--batch_size` both work)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer("repeats", 5, "Timed calls per figure (median).", **fv)
  flags.DEFINE_integer("batch_size", 8, "Batch of the layer inputs.", **fv)
  flags.DEFINE_multi_enum("groups", list(GROUPS), GROUPS, "Groups of operations to time: "
                          "--groups 1x1 bn or repeated.", **fv)
  flags.DEFINE_multi_string("unet_inputs", ["8x64", "2x256"], "Inputs BATCHxSIZE of the b4 "
                            "UNet whose depthwise layers the depthwise_vjp group times.", **fv)
  flags.register_validator(
      "unet_inputs", lambda values: all(_UNET_INPUT.fullmatch(v) for v in values),
      "must be BATCHxSIZE, e.g. 8x64", flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def parse_args(argv=None):
  """The flags of `argv` (without the program name; None: sys.argv); exits 1 on a bad one."""
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__,
                                  multi_value=("groups", "unet_inputs"),
                                  positional=False, prog="python -m benchmarks.ops")
  return cli.flag_namespace(flag_values)


def main(argv=None) -> int:
  args = parse_args(argv)
  rng = np.random.default_rng(0)
  b = args.batch_size
  r = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  rows = []
  if "1x1" in args.groups:
    # (H, Cin, Cout) of b4 1x1 convs at a 64x64 input: expand / project / decoder-ish.
    for h, cin, cout in ((32, 24, 144), (16, 192, 32), (8, 336, 56), (4, 960, 160),
                         (2, 2688, 448)):
      rows.append(time_pair(f"1x1 conv ({b},{h},{h},{cin})->{cout}: native \\| dot_general",
                            (conv_native, conv1x1_dot), (r(b, h, h, cin), r(1, 1, cin, cout)),
                            args.repeats))
  if "depthwise" in args.groups:
    for h, c, k, s in ((32, 144, 3, 1), (16, 336, 5, 1), (32, 144, 3, 2), (4, 1632, 5, 1)):
      fn_native = lambda x, w, k=k, s=s, c=c: conv_native(x, w, s, c, (k - 1) // 2)
      fn_taps = lambda x, w, k=k, s=s: depthwise_taps(x, w, s, (k - 1) // 2)
      rows.append(time_pair(f"depthwise ({b},{h},{h},{c}) k{k} s{s}: native \\| taps",
                            (fn_native, fn_taps), (r(b, h, h, c), r(k, k, 1, c)), args.repeats))
  if "depthwise_vjp" in args.groups:
    autodiff = lambda x, w, geometry: conv_formulations.depthwise_conv_taps(x, w, *geometry)
    custom = lambda x, w, geometry: conv_formulations.depthwise_conv_vjp(x, w, *geometry)
    for unet_input in args.unet_inputs:
      batch, size = map(int, _UNET_INPUT.fullmatch(unet_input).groups())
      total = [0.0, 0.0]
      for (x_shape, w_shape, *geometry), count in unet_depthwise_layers(batch, size).items():
        fns = [lambda x, w, f=f, g=tuple(geometry): f(x, w, g) for f in (autodiff, custom)]
        row = time_pair(
            f"depthwise {x_shape} k{w_shape[0]}x{w_shape[1]} s{geometry[0][0]} "
            f"d{geometry[2][0]} x{count} ({unet_input} UNet): autodiff \\| custom_vjp", fns,
            (r(*x_shape), r(*w_shape)), args.repeats)
        rows.append(row)
        total = [total[0] + count * row[1], total[1] + count * row[2]]
      rows.append((f"all depthwise layers, time x count ({unet_input} UNet): autodiff \\| "
                   "custom_vjp", *total, float("nan")))
  if "bn" in args.groups:
    for h, c in ((32, 144), (16, 336), (64, 16)):
      rows.append(time_pair(f"BN statistics ({b},{h},{h},{c}): E[x^2]-E[x]^2 \\| centred",
                            (bn_stats_moments, bn_stats_centred), (r(b, h, h, c) + 1.0,),
                            args.repeats))
  if "kxk_dots" in args.groups:
    native = lambda x, w, pad: jax.lax.conv_general_dilated(x, w, (1, 1), pad,
                                                            dimension_numbers=DN)
    dots = lambda x, w, pad: conv_formulations.kxk_conv_dots_vjp(x, w, pad)
    for unet_input in args.unet_inputs:
      batch, size = map(int, _UNET_INPUT.fullmatch(unet_input).groups())
      total = [0.0, 0.0]
      for (x_shape, w_shape, pad), count in unet_kxk_layers(batch, size).items():
        fns = [lambda x, w, f=f, pad=pad: f(x, w, pad) for f in (native, dots)]
        row = time_pair(f"{w_shape[0]}x{w_shape[1]} conv {x_shape}->{w_shape[3]} x{count} "
                        f"({unet_input} UNet): native \\| kernel gradient as dots", fns,
                        (r(*x_shape), 0.05 * r(*w_shape)), args.repeats)
        rows.append(row)
        total = [total[0] + count * row[1], total[1] + count * row[2]]
      rows.append((f"all kxk layers, time x count ({unet_input} UNet): native \\| "
                   "kernel gradient as dots", *total, float("nan")))
  if "kxk" in args.groups:
    native3 = lambda x, w: conv_native(x, w, pad=1)
    # 3x3 convs of the UNet decoder at a 64x64 input: (H, Cin, Cout).
    for h, cin, cout in ((4, 608, 256), (8, 312, 128), (16, 160, 64), (32, 80, 32),
                         (64, 32, 16)):
      shape = f"({b},{h},{h},{cin})->{cout}"
      x, w = r(b, h, h, cin), 0.05 * r(3, 3, cin, cout)
      rows.append(time_pair(f"3x3 conv {shape}: native \\| im2col",
                            (native3, conv3x3_im2col), (x, w), args.repeats))
      rows.append(time_pair(f"3x3 conv {shape}: native \\| kernel gradient as dots",
                            (native3, conv3x3_dot_kernel_grad), (x, w), args.repeats))
    for rate in (12, 24, 36):
      fns = (lambda x, w, rate=rate: atrous_full(x, w, rate),
             lambda x, w, rate=rate: atrous_trimmed(x, w, rate))
      rows.append(time_pair(
          f"ASPP 3x3 rate {rate} ({b},8,8,448)->256: full \\| dead taps dropped", fns,
          (r(b, 8, 8, 448), 0.05 * r(3, 3, 448, 256)), args.repeats))
  print(f"backend {jax.default_backend()}, load {timing.load_average()}, "
        f"median of {args.repeats}, forward + backward\n")
  print("| operation: A \\| B | A (ms) | B (ms) | B / A | max abs diff |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for name, a, bt, diff in rows:
    print(f"| {name} | {1e3 * a:.2f} | {1e3 * bt:.2f} | {bt / a:.2f} | {diff:.1e} |")
  return 0


if __name__ == "__main__":
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  sys.exit(main())
