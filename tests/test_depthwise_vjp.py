"""The depthwise convolution with a hand-written gradient
(`conv_formulations.depthwise_conv_vjp`): values and both gradients against XLA's grouped
convolution under plain autodiff, per geometry the models use, f32 and bf16; and where
`conv_formulation` selects it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smd_jax.models import conv_formulations, layers
from tests.compiled_vjp import value_and_vjp

DN = ("NHWC", "HWIO", "NHWC")
U32 = float(jnp.finfo(jnp.float32).eps) / 2  # unit roundoff of one float32 rounding


def grouped_conv(x, w, strides, padding, dilation):
  """The reference: XLA's depthwise (feature_group_count = C) convolution, float32."""
  return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                      dimension_numbers=DN, feature_group_count=x.shape[-1],
                                      precision=jax.lax.Precision.HIGHEST)


def reference_with_bounds(x, w, ct, strides, padding, dilation, dtype):
  """(value, grad_x, grad_w) of the grouped conv in float32 from the (already rounded)
  inputs, each with a per-element bound on a `dtype` computation's error.

  Each element is a sum of n products (n: taps per output / per input pixel, or the
  batch x output pixels a kernel tap sums over). Both float32 computations (ours and
  the reference) are off by at most (n + 1) u32 times the sum of the terms'
  magnitudes, which is the same convolution of |x|, |w|, |ct|; rounding the result to
  `dtype` adds one unit roundoff of it (2^-9 relative for bf16).
  """
  x32, w32, ct32 = (jnp.asarray(a, jnp.float32) for a in (x, w, ct))
  conv = lambda x, w: grouped_conv(x, w, strides, padding, dilation)
  y, gx, gw = value_and_vjp(conv, ct32, x32, w32)
  ay, agx, agw = value_and_vjp(conv, jnp.abs(ct32), jnp.abs(x32), jnp.abs(w32))
  u = float(jnp.finfo(dtype).eps) / 2
  k = w.shape[0] * w.shape[1]
  n_w = ct.shape[0] * ct.shape[1] * ct.shape[2]
  bound = lambda want, mag, n: u * np.abs(want) + 2 * (n + 1) * U32 * np.asarray(mag)
  return [(np.asarray(want), bound(np.asarray(want), mag, n))
          for want, mag, n in ((y, ay, k), (gx, agx, k), (gw, agw, n_w))]


def _data(x_shape, k, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=x_shape), dtype)
  w = jnp.asarray(rng.normal(size=(k, k, 1, x_shape[-1])), dtype)
  return x, w, rng


# (x shape, kernel size, stride, dilation, padding): EfficientNet's 3x3 / 5x5 depthwise
# convs with PyTorch padding (`layers.torch_padding`), its stride-2 blocks on odd and
# even maps, DeepLabV3's dilated ones (smp's output stride 8: dilation 2 and 4), a
# 5x5 at dilation 4 on an 8x8 map whose outer taps read only padding, XLA 'SAME'
# (one more row of padding below than above at stride 2) and asymmetric explicit
# padding whose excess rows the gradient must crop; maps at least
# `ROW_SUMS_MIN_WIDTH` wide, whose kernel gradient sums rows first.
GEOMETRIES = [
    ((2, 16, 16, 8), 3, 1, 1, ((1, 1), (1, 1))),
    ((2, 16, 16, 8), 5, 1, 1, ((2, 2), (2, 2))),
    ((2, 15, 16, 8), 3, 2, 1, ((1, 1), (1, 1))),
    ((2, 16, 13, 8), 5, 2, 1, ((2, 2), (2, 2))),
    ((2, 12, 12, 8), 3, 2, 2, ((2, 2), (2, 2))),
    ((2, 9, 10, 8), 3, 1, 2, ((2, 2), (2, 2))),
    ((2, 8, 8, 8), 5, 1, 4, ((8, 8), (8, 8))),
    ((2, 7, 10, 8), 3, 2, 1, "SAME"),
    ((2, 7, 9, 8), 3, 1, 1, ((0, 3), (2, 0))),
    ((2, 5, 34, 8), 3, 1, 1, ((1, 1), (1, 1))),
    ((2, 5, 67, 8), 5, 2, 1, ((2, 2), (2, 2))),
]
IDS = [f"{s[1]}x{s[2]}-k{k}-s{st}-d{d}-{p if isinstance(p, str) else 'explicit'}"
       for s, k, st, d, p in GEOMETRIES]


def _check(x, w, ct, strides, padding, dilation, dtype):
  got, *grads = value_and_vjp(
      lambda x, w: conv_formulations.depthwise_conv_vjp(x, w, strides, padding, dilation),
      ct, x, w)
  explicit = conv_formulations.explicit_padding(x.shape[1:3], w.shape[:2], strides, padding,
                                                dilation)
  wants = reference_with_bounds(x, w, ct, strides, explicit, dilation, dtype)
  for name, have, (want, bound), like in zip(("value", "grad_x", "grad_w"),
                                             (got, *grads), wants, (got, x, w)):
    assert have.dtype == like.dtype and have.shape == want.shape, name
    err = np.abs(np.asarray(have, np.float64) - want)
    assert np.all(err <= bound), (name, float(err.max()), float((err / bound).max()))


def test_geometries_cover_both_kernel_gradient_sums():
  """Some geometries' outputs are narrower than `ROW_SUMS_MIN_WIDTH` (one whole
  reduction), some at least as wide (row sums first), so the tests below check both."""
  widths = [(s[2] + sum(p[1]) - d * (k - 1) - 1) // st + 1
            for s, k, st, d, p in GEOMETRIES if not isinstance(p, str)]
  assert min(widths) < conv_formulations.ROW_SUMS_MIN_WIDTH <= max(widths)


@pytest.mark.parametrize("x_shape, k, stride, dilation, padding", GEOMETRIES, ids=IDS)
def test_values_and_gradients_match_grouped_conv_f32(x_shape, k, stride, dilation, padding):
  x, w, rng = _data(x_shape, k, jnp.float32)
  y_shape = jax.eval_shape(lambda x, w: grouped_conv(
      x, w, (stride, stride), conv_formulations.explicit_padding(
          x_shape[1:3], (k, k), (stride, stride), padding, (dilation, dilation)),
      (dilation, dilation)), x, w).shape
  ct = jnp.asarray(rng.normal(size=y_shape), jnp.float32)
  _check(x, w, ct, (stride, stride), padding, (dilation, dilation), jnp.float32)


@pytest.mark.parametrize("x_shape, k, stride, dilation, padding",
                         [GEOMETRIES[i] for i in (1, 3, 5, 7, 10)],
                         ids=[IDS[i] for i in (1, 3, 5, 7, 10)])
def test_values_and_gradients_match_grouped_conv_bf16(x_shape, k, stride, dilation, padding):
  """bf16 inputs, float32 accumulation, one rounding to bf16 per result element."""
  x, w, rng = _data(x_shape, k, jnp.bfloat16)
  explicit = conv_formulations.explicit_padding(x_shape[1:3], (k, k), (stride, stride),
                                                padding, (dilation, dilation))
  y_shape = jax.eval_shape(lambda x, w: grouped_conv(
      x, w, (stride, stride), explicit, (dilation, dilation)), x, w).shape
  ct = jnp.asarray(rng.normal(size=y_shape), jnp.bfloat16)
  _check(x, w, ct, (stride, stride), padding, (dilation, dilation), jnp.bfloat16)


def test_gradient_of_a_hand_computed_case():
  """1-D in effect (H = 1, W = 4, one channel), 3-tap kernel [1, 2, 3], stride 2,
  padding 1: the padded row is (0, x0, x1, x2, x3, 0), so y0 = 2 x0 + 3 x1 and
  y1 = x1 + 2 x2 + 3 x3. With cotangent (1, 10): dx = (2, 3 + 10, 20, 30) and
  dw = (0 + 10 x1, x0 + 10 x2, x1 + 10 x3)."""
  x = jnp.asarray([1.0, 2.0, 4.0, 8.0]).reshape(1, 1, 4, 1)
  w = jnp.asarray([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
  f = lambda x, w: conv_formulations.depthwise_conv_vjp(x, w, (1, 2), ((0, 0), (1, 1)))
  y, gx, gw = value_and_vjp(f, jnp.asarray([1.0, 10.0]).reshape(1, 1, 2, 1), x, w)
  np.testing.assert_array_equal(np.ravel(y), [2 * 1 + 3 * 2, 2 + 2 * 4 + 3 * 8])
  np.testing.assert_array_equal(np.ravel(gx), [2, 13, 20, 30])
  np.testing.assert_array_equal(np.ravel(gw), [20, 1 + 40, 2 + 80])


def test_formulation_is_chosen_per_backend_flag_and_geometry():
  pick = conv_formulations.conv_formulation

  def depthwise(k, stride, backend="cpu", **kw):
    shape_x, shape_w = (2, 8, 8, 16), (k, k, 1, 16)
    nhwc = jax.lax.conv_dimension_numbers(shape_x, shape_w, DN)
    return pick(shape_x, shape_w, ((k // 2, k // 2),) * 2, dimension_numbers=nhwc,
                feature_group_count=16, window_strides=(stride, stride), backend=backend,
                **kw)

  for k, stride in ((3, 1), (3, 2), (5, 1), (5, 2)):
    assert depthwise(k, stride, custom_vjp=True) == "taps_vjp"
    assert depthwise(k, stride, custom_vjp=False) == "taps"
    for backend in ("gpu", "tpu"):
      assert depthwise(k, stride, backend, custom_vjp=True) == "native"
  # Not depthwise: the flag changes nothing.
  nhwc = jax.lax.conv_dimension_numbers((2, 8, 8, 16), (3, 3, 16, 8), DN)
  assert pick((2, 8, 8, 16), (3, 3, 16, 8), ((1, 1), (1, 1)), dimension_numbers=nhwc,
              backend="cpu", custom_vjp=True) == "native"


@pytest.mark.parametrize("k, stride, dilation, size", [(3, 2, 1, 9), (5, 1, 4, 8)])
def test_nnx_depthwise_conv_uses_it_and_matches_grouped_conv(monkeypatch, k, stride, dilation,
                                                            size):
  """The model's path (`layers.conv2d` -> `conv_general_dilated`): with the flag on the
  CPU backend, the conv is the custom_vjp one (after dead taps are trimmed: the 5x5 at
  dilation 4 on 8x8 runs as a 3x3), and its gradients w.r.t. input and the full kernel
  parameter equal the grouped conv's (dead taps get exactly zero)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the taps formulations are CPU-only")
  monkeypatch.setattr(conv_formulations, "depthwise_vjp", True)
  conv = layers.conv2d(8, 8, k, stride, groups=8, dilation=dilation, rngs=nnx.Rngs(0))
  x, _, rng = _data((2, size, size, 8), 1, jnp.float32)
  names = {e.primitive.name for e in jax.make_jaxpr(conv)(x).eqns}
  assert "custom_vjp_call" in names and "conv_general_dilated" not in names, names
  w = conv.kernel[...]
  pad = layers.torch_padding(k, stride, dilation)
  padding = ((pad, pad), (pad, pad))
  graphdef, state = nnx.split(conv)
  apply = lambda x, state: nnx.merge(graphdef, state)(x)
  ct = jnp.asarray(rng.normal(size=jax.eval_shape(apply, x, state).shape), jnp.float32)
  got, grad_x, grad_state = value_and_vjp(apply, ct, x, state)
  grad_w, = jax.tree.leaves(grad_state)  # the kernel (no bias)
  wants = reference_with_bounds(x, w, ct, (stride, stride), padding, (dilation, dilation),
                                jnp.float32)
  for name, have, (want, bound) in zip(("value", "grad_x", "grad_w"), (got, grad_x, grad_w),
                                       wants):
    err = np.abs(np.asarray(have, np.float64) - want)
    assert np.all(err <= bound), (name, float(err.max()))
  if dilation == 4:  # rows / columns 0 and 4 of the kernel read only padding
    dead = np.asarray(grad_w)
    assert not dead[[0, 4]].any() and not dead[:, [0, 4]].any()
