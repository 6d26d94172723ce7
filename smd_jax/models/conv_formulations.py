"""Convolution formulations for the CPU backend, chosen per convolution in one place.

`conv_general_dilated` is the drop-in for ``lax.conv_general_dilated`` that
`layers.conv2d` hands to ``nnx.Conv``: on every backend it drops kernel taps that read
only padding (`trim_dead_taps`); then `conv_formulation` picks, on the CPU backend only,
depthwise convs as shifted-slice taps (`depthwise_conv_taps`, or `depthwise_conv_vjp`
with a hand-written gradient) and 1x1 convs as dots with a hand-written gradient
(`pointwise_conv_dot`). `upsample_conv_formulation` picks, on the CPU backend only,
the sub-pixel form of the UNet decoder's upsample + 3x3 conv
(`upsampled_skip_conv3x3`), and `spatial_mean` the global average pools (squeeze-and-
excitation, ASPP) as dots. GPUs and TPUs keep XLA's native convolutions and reductions.
Why each one: docs/benchmarks.md.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from smd_jax import env_flags


def depthwise_conv_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                        padding: Sequence[tuple[int, int]],
                        dilation: Sequence[int] = (1, 1)) -> jax.Array:
  """Depthwise conv as a sum over the k*k taps of strided slices times per-channel
  weights; equal to ``lax.conv_general_dilated(..., feature_group_count=C)``.

  x: [B, H, W, C]; kernel: [kh, kw, 1, C]; explicit (lo, hi) padding per spatial dim.
  Accumulates in (at least) float32 and returns x's dtype.

  Why: XLA:CPU lowers grouped convolutions (and above all their kernel gradient, a
  ``batch_group_count`` conv) to a slow generic loop: 10-50x slower than this
  formulation on CPU for EfficientNet's shapes. GPUs/TPUs keep the native conv.
  """
  kh, kw = kernel.shape[:2]
  (sh, sw), (dh, dw) = tuple(strides), tuple(dilation)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  b, h, w, c = x.shape
  ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
  out = jnp.zeros((b, ho, wo, c), acc_dtype)
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(x, (0, i * dh, j * dw, 0),
                          (b, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, c),
                          (1, sh, sw, 1))
      out = out + tap.astype(acc_dtype) * kernel[i, j, 0].astype(acc_dtype)
  return out.astype(x.dtype)


def explicit_padding(in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int],
                     padding: str | Sequence[tuple[int, int]],
                     dilation: Sequence[int] = (1, 1)) -> tuple[tuple[int, int], ...]:
  """((lo, hi), (lo, hi)) for 'SAME' / 'VALID' (XLA's rule: for stride 2, 'SAME' pads
  one more row at the bottom than at the top) or an explicit padding, as given."""
  if isinstance(padding, str):
    extent = [d * (k - 1) + 1 for k, d in zip(kernel_hw, dilation)]
    return tuple(tuple(p) for p in jax.lax.padtype_to_pads(tuple(in_hw), extent,
                                                            tuple(strides), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def depthwise_input_grad(g: jax.Array, kernel: jax.Array, in_hw: Sequence[int],
                         strides: Sequence[int], padding: Sequence[tuple[int, int]],
                         dilation: Sequence[int] = (1, 1)) -> jax.Array:
  """Gradient of `depthwise_conv_taps` w.r.t. its input: g [B, Ho, Wo, C] (the output
  cotangent), kernel [kh, kw, 1, C] -> [B, H, W, C] in g's dtype.

  Output pixel o read padded input row ``a * dilation + stride * o`` with tap a, so
  input row r gets ``sum_a g[(r + lo - a * dilation) / stride] * w[a]`` over the taps
  where that index is a whole output row: a stride-1 correlation with the flipped
  kernel over g dilated by the stride (stride - 1 zeros between rows) and padded by
  ``dilation * (k - 1) - lo`` before / what is left to H after (negative: cropped).
  One `lax.pad` and one fused taps pass, accumulated in (at least) float32.
  """
  config = [(0, 0, 0)]
  for axis in range(2):
    k, s, d, lo = kernel.shape[axis], strides[axis], dilation[axis], padding[axis][0]
    out = g.shape[1 + axis]
    low = d * (k - 1) - lo
    # Length low + s * (out - 1) + 1 + high = H + d * (k - 1): H rows after the taps.
    config.append((low, in_hw[axis] + lo - s * (out - 1) - 1, s - 1))
  config.append((0, 0, 0))
  spread = jax.lax.pad(g, jnp.zeros((), g.dtype), config)
  return depthwise_conv_taps(spread, kernel[::-1, ::-1], (1, 1), ((0, 0), (0, 0)), dilation)


def depthwise_kernel_grad(x: jax.Array, g: jax.Array, kernel_hw: Sequence[int],
                          strides: Sequence[int], padding: Sequence[tuple[int, int]],
                          dilation: Sequence[int] = (1, 1)) -> jax.Array:
  """Gradient of `depthwise_conv_taps` w.r.t. its kernel: x [B, H, W, C] (its input),
  g [B, Ho, Wo, C] (the output cotangent) -> [kh, kw, 1, C] in float32 (or wider).

  Tap (i, j) of channel c: the sum over batch and output pixels of g times the
  strided input slice that tap multiplied in the forward pass. All k*k sums come from
  one variadic reduction, which XLA fuses with the slices and products: one pass over
  x and g, no tap materialised. On maps at least `ROW_SUMS_MIN_WIDTH` wide it sums
  each output row first (keeping batch and rows, which XLA:CPU spreads over its
  threads) and then the [B, Ho, C] row sums.
  """
  (kh, kw), (sh, sw), (dh, dw) = tuple(kernel_hw), tuple(strides), tuple(dilation)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  b, ho, wo, c = g.shape
  g = g.astype(acc_dtype)
  products = []
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(x, (0, i * dh, j * dw, 0),
                          (b, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, c),
                          (1, sh, sw, 1))
      products.append(tap.astype(acc_dtype) * g)
  row_sums_first = wo >= ROW_SUMS_MIN_WIDTH
  zeros = [jnp.zeros((), acc_dtype)] * len(products)
  sums = jnp.stack(jax.lax.reduce(products, zeros,
                                  lambda acc, new: [a + n for a, n in zip(acc, new)],
                                  (2,) if row_sums_first else (0, 1, 2)))
  if row_sums_first:
    sums = jnp.sum(sums, axis=(1, 2))
  return sums.reshape(kh, kw, 1, c)


# `depthwise_kernel_grad` sums rows first on maps at least this wide. Per layer, idle,
# on the b4 UNet's depthwise shapes (2026-12-06, 2-core Intel Xeon, jax 0.12, forward +
# reductions of the kernel gradient alone; docs/benchmarks.md): the row sums take
# 0.14-0.4x the time of k*k separate reductions on 32-128 px wide maps and ~1x to 1.9x
# that of one whole reduction on maps up to 16 px wide.
ROW_SUMS_MIN_WIDTH = 32


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_taps_vjp(x, kernel, strides, padding, dilation):
  return depthwise_conv_taps(x, kernel, strides, padding, dilation)


def _depthwise_taps_vjp_fwd(x, kernel, strides, padding, dilation):
  # Residuals: the unpadded input and the kernel (the padding is redone in the
  # backward pass, where XLA fuses it into the reductions).
  return depthwise_conv_taps(x, kernel, strides, padding, dilation), (x, kernel)


def _depthwise_taps_vjp_bwd(strides, padding, dilation, residuals, g):
  x, kernel = residuals
  grad_x = depthwise_input_grad(g, kernel, x.shape[1:3], strides, padding, dilation)
  grad_k = depthwise_kernel_grad(x, g, kernel.shape[:2], strides, padding, dilation)
  return grad_x.astype(x.dtype), grad_k.astype(kernel.dtype)


_depthwise_taps_vjp.defvjp(_depthwise_taps_vjp_fwd, _depthwise_taps_vjp_bwd)


def depthwise_conv_vjp(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                       padding: str | Sequence[tuple[int, int]],
                       dilation: Sequence[int] = (1, 1)) -> jax.Array:
  """`depthwise_conv_taps` (same arguments, also 'SAME' / 'VALID' padding, same values)
  with a hand-written gradient (`jax.custom_vjp`): the input gradient as one fused taps
  pass over the stride-dilated, padded output gradient with the flipped kernel
  (`depthwise_input_grad`), the kernel gradient as k*k reductions
  (`depthwise_kernel_grad`), both accumulated in (at least) float32 and cast once to
  the input's / kernel's dtype.

  Why: autodiff of the taps transposes every strided slice into a pad of the full
  padded input and adds the k*k of them, in x's dtype (for bfloat16, k*k roundings);
  on XLA:CPU that backward costs ~25x the fused forward (docs/benchmarks.md).
  """
  strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
  padding = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
  return _depthwise_taps_vjp(x, kernel, strides, padding, dilation)


def pointwise_conv_dot(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
                       precision: Any = None) -> jax.Array:
  """1x1 convolution without padding as one ``dot_general`` over the channels, with a
  hand-written gradient (`_pointwise_dot`); equal to ``lax.conv_general_dilated``
  (NHWC / HWIO) up to summation order.

  x: [B, H, W, Cin]; kernel: [1, 1, Cin, Cout] -> [B, ceil(H/sh), ceil(W/sw), Cout].

  Why: XLA:CPU already turns a 1x1 convolution's forward pass into a dot, but not the
  convolutions of its gradient; for EfficientNet's wide, small-resolution 1x1 layers
  those are up to ~15x slower than the dots of this formulation (benchmarks/ops.py,
  docs/benchmarks.md). GPUs/TPUs keep the native convolution.
  """
  sh, sw = tuple(strides)
  if (sh, sw) != (1, 1):
    x = jax.lax.slice(x, (0, 0, 0, 0), x.shape, (1, sh, sw, 1))
  return _pointwise_dot(x, kernel[0, 0], precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise_dot(x, kernel, precision):
  return jax.lax.dot_general(x, kernel, (((3,), (0,)), ((), ())), precision=precision)


def _pointwise_dot_fwd(x, kernel, precision):
  return _pointwise_dot(x, kernel, precision), (x, kernel)


def _pointwise_dot_bwd(precision, residuals, g):
  # Why by hand: under autodiff XLA:CPU transposes the wider operand of the kernel
  # gradient (e.g. the 192-channel gradient of a 32 -> 192 expansion); `_rows_product`
  # transposes the narrower: 0.4-0.9x the time per layer (docs/benchmarks.md).
  x, kernel = residuals
  cin, cout = kernel.shape
  grad_x = jax.lax.dot_general(g, kernel, (((3,), (1,)), ((), ())), precision=precision)
  grad_k = _rows_product(x.reshape(-1, cin), g.reshape(-1, cout), precision=precision)
  return grad_x.astype(x.dtype), grad_k.astype(kernel.dtype)


_pointwise_dot.defvjp(_pointwise_dot_fwd, _pointwise_dot_bwd)


def _rows_product(a: jax.Array, b: jax.Array, **matmul_kwargs) -> jax.Array:
  """``a^T b`` for a [N, p] and b [N, q] (a kernel gradient: contract the rows), as
  ``a^T b`` or ``(b^T a)^T``, whichever transposes the narrower operand: XLA:CPU must
  copy one of them transposed, and left to itself picks the wider one."""
  if a.shape[1] <= b.shape[1]:
    return jnp.matmul(a.T, b, **matmul_kwargs)
  return jnp.matmul(b.T, a, **matmul_kwargs).T


_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _explicit_nhwc(lhs_shape: Sequence[int], rhs_shape: Sequence[int], padding: Any,
                   lhs_dilation: Sequence[int] | None, dimension_numbers: Any,
                   kwargs: dict) -> bool:
  """A 2-D NHWC / HWIO convolution with explicit (lo, hi) padding, no input dilation,
  no explicit output sharding and no preferred element type: the convolutions the
  rewrites below understand (every other one goes to XLA untouched)."""
  return (len(lhs_shape) == 4 and not isinstance(padding, str)
          and tuple(lhs_dilation or (1, 1)) == (1, 1) and kwargs.get("out_sharding") is None
          and kwargs.get("preferred_element_type") is None
          and jax.lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape),
                                             dimension_numbers) == _NHWC_HWIO)


def live_taps(in_size: int, kernel_size: int, stride: int, dilation: int,
              padding: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
  """(first, last, new padding): the kernel taps along one spatial dim that read at
  least one input pixel, and the padding that gives the same output with only them.

  Tap a reads input rows ``a * dilation - lo + stride * i`` for the outputs i; a tap
  whose rows all lie in the zero padding adds exactly zero to every output (and its
  weight gradient is exactly zero). Such taps are common in atrous layers: at 8x8
  features, DeepLabV3's ASPP 3x3 convs with rates 12/24/36 (padding = rate) read only
  padding off the centre, and so do the outer taps of EfficientNet's 5x5 depthwise
  convs at dilation 4 (smp's output stride 8); PyTorch and XLA still compute them,
  over the padded input. Dead taps are dropped only where the new padding stays
  >= 0 on both sides, so the output (size and values) is unchanged.
  """
  lo, hi = padding
  out_size = (in_size + lo + hi - dilation * (kernel_size - 1) - 1) // stride + 1
  first_row = [a * dilation - lo for a in range(kernel_size)]
  live = [a for a, r in enumerate(first_row)
          if r <= in_size - 1 and r + stride * (out_size - 1) >= 0]
  if not live or out_size <= 0 or lo < 0 or hi < 0:
    return 0, kernel_size - 1, (lo, hi)
  first = min(live[0], lo // dilation)
  last = max(live[-1], kernel_size - 1 - hi // dilation)
  return first, last, (lo - first * dilation, hi - (kernel_size - 1 - last) * dilation)


def trim_dead_taps(lhs_shape: Sequence[int], rhs: jax.Array, window_strides: Sequence[int],
                   padding: Sequence[tuple[int, int]], rhs_dilation: Sequence[int] | None
                   ) -> tuple[jax.Array, tuple[tuple[int, int], ...]]:
  """NHWC / HWIO kernel and explicit padding without the taps that read only padding
  (`live_taps` per spatial dim); the same convolution when nothing is dead."""
  dilation = tuple(rhs_dilation or (1, 1))
  spans = [live_taps(lhs_shape[1 + d], rhs.shape[d], window_strides[d], dilation[d],
                     tuple(padding[d])) for d in range(2)]
  (h0, h1, pad_h), (w0, w1, pad_w) = spans
  if (h0, h1, w0, w1) != (0, rhs.shape[0] - 1, 0, rhs.shape[1] - 1):
    rhs = rhs[h0:h1 + 1, w0:w1 + 1]
  return rhs, (pad_h, pad_w)


def _native_nhwc(x, kernel, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC_HWIO,
                                      precision=precision)


def kernel_grad_dots(x: jax.Array, g: jax.Array, kernel_hw: Sequence[int],
                     padding: Sequence[tuple[int, int]]) -> jax.Array:
  """Kernel gradient of a stride-1, undilated NHWC / HWIO convolution: x [B, H, W, Cin]
  (its input), g [B, Ho, Wo, Cout] (the output cotangent) -> [kh, kw, Cin, Cout] in
  float32 (or wider).

  Tap (i, j) is one matrix product contracting batch and space of the input slice that
  tap multiplied with g: ``sum_{b,h,w} x_pad[b, h + i, w + j, :]^T g[b, h, w, :]``,
  transposing the narrower of the two operands.
  """
  kh, kw = kernel_hw
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  _, ho, wo, cout = g.shape
  cin = x.shape[-1]
  g2 = g.reshape(-1, cout)
  tap_grad = lambda i, j: _rows_product(x[:, i:i + ho, j:j + wo].reshape(-1, cin), g2,
                                        preferred_element_type=acc_dtype)
  return jnp.stack([jnp.stack([tap_grad(i, j) for j in range(kw)]) for i in range(kh)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kxk_dots_vjp(x, kernel, padding, precision):
  return _native_nhwc(x, kernel, padding, precision)


def _kxk_dots_vjp_fwd(x, kernel, padding, precision):
  return _native_nhwc(x, kernel, padding, precision), (x, kernel)


def _kxk_dots_vjp_bwd(padding, precision, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _native_nhwc(x, kernel, padding, precision), x)
  grad_x, = input_vjp(g)
  grad_k = kernel_grad_dots(x, g, kernel.shape[:2], padding)
  return grad_x, grad_k.astype(kernel.dtype)


_kxk_dots_vjp.defvjp(_kxk_dots_vjp_fwd, _kxk_dots_vjp_bwd)


def kxk_conv_dots_vjp(x: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]],
                      precision: Any = None) -> jax.Array:
  """Stride-1, undilated NHWC / HWIO convolution (explicit padding): XLA's forward and
  input gradient, the kernel gradient as k*k dots (`kernel_grad_dots`), accumulated
  in (at least) float32 and cast once to the kernel's dtype.

  Why: XLA:CPU runs the kernel gradient as a convolution with batch and features
  swapped and copies both activations into that layout first (the "layout copy"
  share of the step's profile, docs/benchmarks.md); the dots read them as they are.
  """
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _kxk_dots_vjp(x, kernel, padding, precision)


def single_output_conv(x: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]],
                       precision: Any = None) -> jax.Array:
  """A stride-1, undilated kxk convolution with one output channel (a depth head), NHWC /
  HWIO with explicit padding: one dot of x with the k*k taps' weights ([Cin, k*k], a map
  per tap), then the k*k maps shifted and summed. Equal up to summation order, in
  float32 whatever x's dtype, cast once.

  Why: XLA:CPU's library takes no convolution with a single output channel, and XLA's
  own loop for it costs ~3x the dot and the sum (2x256x256x16 -> 1, 3x3: 5.5 vs 1.6
  ms). The gradient is the plain convolution's, which that loop computes well enough.
  """
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _single_output_vjp(x, kernel, padding, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _single_output_vjp(x, kernel, padding, precision):
  kh, kw, cin, _ = kernel.shape
  (lo_h, hi_h), (lo_w, hi_w) = padding
  taps = jax.lax.dot_general(x, kernel.reshape(kh * kw, cin), (((3,), (1,)), ((), ())),
                             precision=precision, preferred_element_type=jnp.float32)
  taps = jnp.pad(taps, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  ho, wo = taps.shape[1] - kh + 1, taps.shape[2] - kw + 1
  out = sum(taps[:, a:a + ho, c:c + wo, a * kw + c] for a in range(kh) for c in range(kw))
  return out[..., None].astype(x.dtype)


def _single_output_fwd(x, kernel, padding, precision):
  return _single_output_vjp(x, kernel, padding, precision), (x, kernel)


def _single_output_bwd(padding, precision, residuals, g):
  x, kernel = residuals
  _, vjp = jax.vjp(lambda x, k: _native_nhwc(x, k, padding, precision), x, kernel)
  return vjp(g)


_single_output_vjp.defvjp(_single_output_fwd, _single_output_bwd)


def _fold_taps(w: jax.Array) -> jax.Array:
  """Sub-pixel folding of 3 kernel taps (axis 0 of `w`) over a nearest-upsampled input:
  output row 2i + a (phase a) reads upsampled rows 2i + a - 1 .. 2i + a + 1, i.e.
  source rows (i - 1, i) for a = 0 and (i, i + 1) for a = 1, so the kernel rows fold
  to (w0, w1 + w2) and (w0 + w1, w2). Returns [phase a, source tap t, *w.shape[1:]].
  (Written as adds: as an einsum with a 0/1 matrix, XLA:CPU took ~10x longer, ~5 ms
  for the b4 UNet decoder's 448 -> 256 kernel.)"""
  return jnp.stack([jnp.stack([w[0], w[1] + w[2]]), jnp.stack([w[0] + w[1], w[2]])])


def upsampled_conv3x3(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """``conv3x3(upsample_nearest_2x(x), kernel)`` (stride 1, padding 1, NHWC / HWIO)
  computed at x's resolution: x [B, H, W, Cin], kernel [3, 3, Cin, Cout] -> [B, 2H, 2W,
  Cout], equal up to summation order.

  Each of the four output phases (row parity a, column parity b) is a 2x2 convolution
  of x with the 3x3 kernel folded onto the source pixels it reads (`_fold_taps`); the
  four run as one VALID 2x2 convolution with 4 * Cout outputs over x padded by one
  pixel, and phase (a, b) is its output shifted by (a, b), interleaved into the
  result. 4 kernel taps per output pixel instead of 9, and the upsampled input (4x x)
  is never built.

  Why: in smp's UNet decoder the first conv of every block reads the nearest-upsampled
  map; on the CPU its forward pass and both gradients cost ~9/4 of what they need
  (docs/benchmarks.md).
  """
  b, h, w, _ = x.shape
  cout = kernel.shape[-1]
  rows = _fold_taps(kernel)  # [a, t, 3 (kernel column), Cin, Cout]
  both = _fold_taps(jnp.moveaxis(rows, 2, 0))  # [b, u, a, t, Cin, Cout]
  # [t, u, Cin, a, b, Cout]: tap (t, u) of phase (a, b).
  folded = both.transpose(3, 1, 4, 2, 0, 5).reshape(2, 2, kernel.shape[2], 4 * cout)
  # XLA:CPU's own kernel gradient of a 2x2 convolution is a generic loop (~30x
  # slower than its library's 3x3 ones): the kernel gradient as 4 dots instead.
  out = kxk_conv_dots_vjp(x, folded, ((1, 1), (1, 1)), precision)
  phases = out.reshape(b, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([phases[:, a:a + h, c:c + w, a, c] for c in (0, 1)], axis=3)
          for a in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)


def upsample_conv_formulation(backend: str | None = None) -> str:
  """How smp's UNet decoder computes the 3x3 conv of its nearest-upsampled input:
  'subpixel' (`upsampled_skip_conv3x3`) on the CPU backend while
  `subpixel_upsample_conv` is on, else 'native' (upsample, concat, XLA's conv)."""
  backend = backend or jax.default_backend()
  return "subpixel" if backend == "cpu" and _switch("subpixel_upsample_conv") else "native"


def upsampled_skip_conv3x3(x: jax.Array, skip: jax.Array | None, kernel: jax.Array,
                           precision: Any = None) -> jax.Array:
  """``conv3x3(concat([upsample_nearest_2x(x), skip]), kernel)``, stride 1, padding 1
  (a UNet decoder block's first conv, NHWC / HWIO; ``skip`` may be None), up to
  summation order: the kernel's first Cin(x) input channels act on x through
  `upsampled_conv3x3`, the rest on the skip as its own conv, and the two are summed."""
  cx = x.shape[-1]
  y = upsampled_conv3x3(x, kernel[:, :, :cx], precision)
  if skip is not None:
    y = y + conv_general_dilated(skip, kernel[:, :, cx:], (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=_NHWC_HWIO, precision=precision)
  return y


def spatial_mean(x: jax.Array, backend: str | None = None) -> jax.Array:
  """``jnp.mean(x, axis=(1, 2), keepdims=True)`` of NHWC ``x`` (a global average pool,
  [B, H, W, C] -> [B, 1, 1, C], float32 accumulation, ``x``'s dtype), up to summation
  order. On the CPU backend while `pooling_dot` is on, the sum over H * W is a
  matrix-vector product with a vector of ones: XLA:CPU's library runs it in 0.5-0.8x the
  time of its own reduction, which it splits into partial-sum windows first."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or not _switch("pooling_dot"):
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  b, h, w, c = x.shape
  sums = jnp.einsum("bpc,p->bc", x.reshape(b, h * w, c), jnp.ones((h * w,), x.dtype),
                    preferred_element_type=jnp.float32)
  return (sums / (h * w)).astype(x.dtype).reshape(b, 1, 1, c)


# The CPU formulation switches below. Each is None by default: `_switch` then reads its
# environment variable (SWITCH_VARIABLES) each time a model is traced, not at import, so
# that a typo such as SMD_POOLING_DOT=yes reaches the commands' one-line error handler.
# Assigning True or False in code (`conv_formulations.pooling_dot = False`, as tests and
# benchmarks do) overrides the environment; before a function is traced (jit caches do
# not see it).

# Whether depthwise convs on the CPU backend use the hand-written gradient
# (`depthwise_conv_vjp`, formulation 'taps_vjp') or autodiff's of the same taps
# ('taps'). Every kernel and stride: per layer, idle (`benchmarks.ops --groups
# depthwise_vjp`, 2x256 UNet, 2026-12-05), it takes 0.23-0.58x autodiff's time for 3x3
# kernels, 0.86-0.88x for 5x5 at stride 2 and 1.16-1.54x for 5x5 at stride 1, yet the
# whole train step is faster with it on the 5x5 stride-1 layers too (b2@256 0.976x the
# time in 9 interleaved rounds, twice; b8@64 0.99x): in the step, autodiff keeps each
# tap's slice for the backward pass. SMD_DEPTHWISE_VJP.
DEPTHWISE_VJP_DEFAULT = True
depthwise_vjp: bool | None = None

# Whether stride-1, undilated kxk convs on the CPU backend with at least
# KXK_DOTS_MIN_CHANNELS input channels get `kxk_conv_dots_vjp` (formulation
# 'kxk_dots') instead of XLA's convolution and its gradient ('native'). Off by default:
# on an idle machine XLA's own kernel gradient is faster (2026-12-05, 2-core AMD EPYC,
# jax 0.12: per layer 1.0-3.5x less time than the dots on the b4 UNet's shapes at 2x256;
# the whole b2@256 train step 0.81x the time with the dots off, b8@64 0.98x,
# docs/benchmarks.md). The dots won only on loaded machines (2026-12-04). SMD_KXK_DOTS.
KXK_DOTS_DEFAULT = False
KXK_DOTS_MIN_CHANNELS = 64
kxk_dots: bool | None = None

# Whether stride-1, undilated kxk convs with one output channel on the CPU backend (the
# depth head) run as `single_output_conv` (formulation 'single_output') instead of
# XLA's convolution. SMD_SINGLE_OUTPUT_CONV.
SINGLE_OUTPUT_CONV_DEFAULT = True
single_output: bool | None = None

# Whether smp's UNet decoder computes its upsample + 3x3 conv at the low resolution on
# the CPU backend (`upsampled_skip_conv3x3`): the b4 UNet's b2@256 train step 0.92x the
# time, its eval step 0.91x, b8@64 unchanged (2026-12-06, 2-core Intel Xeon, jax 0.12,
# interleaved A/B; docs/benchmarks.md). SMD_SUBPIXEL_UPSAMPLE.
SUBPIXEL_UPSAMPLE_DEFAULT = True
subpixel_upsample_conv: bool | None = None

# Whether `spatial_mean` (the squeeze-and-excitation and ASPP pools) sums over H, W as
# a dot on the CPU backend: the b4 UNet's eval step 0.95x the time at b2@256 and at
# b8@64, the train step unchanged (2026-12-07, 2-core AMD EPYC Zen 4, jax 0.12.1,
# interleaved A/B; docs/benchmarks.md). SMD_POOLING_DOT.
POOLING_DOT_DEFAULT = True
pooling_dot: bool | None = None

# Each switch's environment variable and default.
SWITCH_VARIABLES = {
    "depthwise_vjp": ("SMD_DEPTHWISE_VJP", DEPTHWISE_VJP_DEFAULT),
    "kxk_dots": ("SMD_KXK_DOTS", KXK_DOTS_DEFAULT),
    "single_output": ("SMD_SINGLE_OUTPUT_CONV", SINGLE_OUTPUT_CONV_DEFAULT),
    "subpixel_upsample_conv": ("SMD_SUBPIXEL_UPSAMPLE", SUBPIXEL_UPSAMPLE_DEFAULT),
    "pooling_dot": ("SMD_POOLING_DOT", POOLING_DOT_DEFAULT),
}


def _switch(name: str) -> bool:
  """The module's switch `name`: its assigned value, or while None its environment
  variable's (`env_flags.on_off`: 1, 0 or unset; a typo is a `UserError`)."""
  assigned = globals()[name]
  if assigned is not None:
    return assigned
  return env_flags.on_off(*SWITCH_VARIABLES[name])


def conv_formulation(lhs_shape: Sequence[int], rhs_shape: Sequence[int], padding: Any, *,
                     lhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                     feature_group_count: int = 1, backend: str | None = None,
                     window_strides: Sequence[int] = (1, 1), custom_vjp: bool | None = None,
                     rhs_dilation: Sequence[int] | None = None,
                     kernel_grad_dots: bool | None = None, **kwargs) -> str:
  """Which formulation `conv_general_dilated` uses for a convolution: 'taps'
  (`depthwise_conv_taps`), 'taps_vjp' (`depthwise_conv_vjp`: the same taps with a
  hand-written gradient), 'dot' (`pointwise_conv_dot`), 'kxk_dots'
  (`kxk_conv_dots_vjp`), 'single_output' (`single_output_conv`) or 'native' (XLA's own).

  The alternatives are chosen on the CPU backend only (``backend``: default
  ``jax.default_backend()``), for 2-D NHWC / HWIO convolutions without input
  dilation, string padding, an explicit output sharding or a preferred element type;
  every other case, and every convolution on GPU/TPU, is 'native'. Depthwise convs
  get 'taps_vjp' if ``custom_vjp`` (default: the module's `depthwise_vjp`), else
  'taps'.
  Stride-1, undilated kxk convs with one output channel get 'single_output'
  (`single_output_conv`) while the module's `single_output` is on; others with at
  least `KXK_DOTS_MIN_CHANNELS` input channels get 'kxk_dots' if ``kernel_grad_dots``
  (default: the module's `kxk_dots`).
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or not _explicit_nhwc(lhs_shape, rhs_shape, padding, lhs_dilation,
                                            dimension_numbers, kwargs):
    return "native"
  if (feature_group_count > 1 and feature_group_count == lhs_shape[-1] == rhs_shape[-1]
      and rhs_shape[-2] == 1):
    use_vjp = _switch("depthwise_vjp") if custom_vjp is None else custom_vjp
    return "taps_vjp" if use_vjp else "taps"
  if (feature_group_count == 1 and tuple(rhs_shape[:2]) == (1, 1)
      and all(tuple(p) == (0, 0) for p in padding)):
    return "dot"
  plain_kxk = (feature_group_count == 1 and tuple(window_strides) == (1, 1)
               and tuple(rhs_dilation or (1, 1)) == (1, 1) and max(rhs_shape[:2]) > 1)
  if _switch("single_output") and plain_kxk and rhs_shape[-1] == 1:
    return "single_output"
  use_dots = _switch("kxk_dots") if kernel_grad_dots is None else kernel_grad_dots
  if use_dots and plain_kxk and rhs_shape[-2] >= KXK_DOTS_MIN_CHANNELS:
    return "kxk_dots"
  return "native"


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  # Drop-in for lax.conv_general_dilated inside nnx.Conv (NHWC / HWIO). On every
  # backend, kernel taps that read only padding are dropped first (`trim_dead_taps`:
  # the same maths, less work; an atrous 3x3 may become a 1x1). Then, on the CPU
  # backend, depthwise convs go to `depthwise_conv_taps` (or `depthwise_conv_vjp`),
  # 1x1 convs to `pointwise_conv_dot` and, with `kxk_dots`, wide stride-1 kxk convs to
  # `kxk_conv_dots_vjp` (`conv_formulation` decides, `_CPU_FORMULATIONS`
  # maps its answer to the function); everything else, and every conv on GPU/TPU, to
  # XLA's native convolution.
  if _explicit_nhwc(lhs.shape, rhs.shape, padding, lhs_dilation, dimension_numbers, kwargs):
    rhs, padding = trim_dead_taps(lhs.shape, rhs, window_strides, padding, rhs_dilation)
  formulation = conv_formulation(lhs.shape, rhs.shape, padding, lhs_dilation=lhs_dilation,
                                 dimension_numbers=dimension_numbers,
                                 feature_group_count=feature_group_count,
                                 window_strides=window_strides, rhs_dilation=rhs_dilation,
                                 **kwargs)
  if formulation == "native":
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  return _CPU_FORMULATIONS[formulation](lhs, rhs, tuple(window_strides), padding,
                                       tuple(rhs_dilation or (1, 1)), precision)


# conv_formulation's CPU alternatives: (x, kernel, strides, explicit padding, kernel
# dilation, precision) -> output. The taps accumulate in float32 whatever `precision`.
_CPU_FORMULATIONS = {
    "taps": lambda x, k, strides, pad, dilation, _: depthwise_conv_taps(
        x, k, strides, pad, dilation),
    "taps_vjp": lambda x, k, strides, pad, dilation, _: depthwise_conv_vjp(
        x, k, strides, pad, dilation),
    "dot": lambda x, k, strides, pad, dilation, precision: pointwise_conv_dot(
        x, k, strides, precision),
    "kxk_dots": lambda x, k, strides, pad, dilation, precision: kxk_conv_dots_vjp(
        x, k, pad, precision),
    "single_output": lambda x, k, strides, pad, dilation, precision: single_output_conv(
        x, k, pad, precision),
}
