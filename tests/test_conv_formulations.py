"""Per-backend convolution formulations (smd_jax/models/conv_formulations.py): which one
is chosen, and each equal to XLA's plain convolution, forward and gradients, f32 and
bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smd_jax.models import conv_formulations, layers
from tests.compiled_vjp import value_and_vjp

DN = ("NHWC", "HWIO", "NHWC")


def plain_conv(x, w, strides, padding, dilation=(1, 1), groups=1):
  return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                      dimension_numbers=DN, feature_group_count=groups,
                                      precision=jax.lax.Precision.HIGHEST)


def _data(shape_x, shape_w, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=shape_x), dtype),
          jnp.asarray(rng.normal(size=shape_w), dtype))


def test_formulation_is_chosen_per_backend():
  nhwc = jax.lax.conv_dimension_numbers((2, 8, 8, 16), (1, 1, 16, 32), DN)
  kw = dict(dimension_numbers=nhwc)
  pick = conv_formulations.conv_formulation
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((0, 0), (0, 0)), backend="cpu", **kw) == "dot"
  assert pick((2, 8, 8, 16), (3, 3, 1, 16), ((1, 1), (1, 1)), feature_group_count=16,
              backend="cpu", custom_vjp=False, **kw) == "taps"
  assert pick((2, 8, 8, 16), (3, 3, 16, 32), ((1, 1), (1, 1)), backend="cpu", **kw) == "native"
  for backend in ("gpu", "tpu"):
    assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((0, 0), (0, 0)), backend=backend,
                **kw) == "native"
    assert pick((2, 8, 8, 16), (3, 3, 1, 16), ((1, 1), (1, 1)), feature_group_count=16,
                backend=backend, **kw) == "native"
  # Cases the alternatives do not cover stay native on the CPU too.
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((1, 1), (1, 1)), backend="cpu", **kw) == "native"
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), "SAME", backend="cpu", **kw) == "native"
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((0, 0), (0, 0)), backend="cpu",
              preferred_element_type=jnp.float32, **kw) == "native"
  nchw = jax.lax.conv_dimension_numbers((2, 16, 8, 8), (32, 16, 1, 1), ("NCHW", "OIHW", "NCHW"))
  assert pick((2, 16, 8, 8), (32, 16, 1, 1), ((0, 0), (0, 0)), dimension_numbers=nchw,
              backend="cpu") == "native"


def unit_roundoff(dtype):
  """Relative error of one rounding: 2^-8 for bfloat16 (8 significant bits), 2^-24 for f32."""
  return float(jnp.finfo(dtype).eps) / 2


def pointwise_error_bounds(x, w, ct, stride, dtype):
  """NumPy float64 reference of y = x . w (1x1, strided) and of its vector-Jacobian
  products with the cotangent `ct` (g_x = ct . w^T, g_w = x^T . ct), each with
  per-element error bounds for a `dtype` computation.

  Standard worst-case bounds: a sum of n products accumulated in float32 is off by
  at most n * u32 * (the sum of the terms' magnitudes), and rounding the result to
  `dtype` adds u times it (u: the dtype's unit roundoff; inputs and cotangent are
  already `dtype` values, so products are exact).
  """
  u, u32 = unit_roundoff(dtype), unit_roundoff(jnp.float32)
  xs = np.asarray(x, np.float64)[:, ::stride, ::stride]
  w2 = np.asarray(w, np.float64)[0, 0]
  c = np.asarray(ct, np.float64)
  cin, cout = w2.shape
  n = xs.shape[0] * xs.shape[1] * xs.shape[2]
  y = xs @ w2
  e_y = (u + cin * u32) * (np.abs(xs) @ np.abs(w2))
  gx = np.zeros(np.shape(x))
  gx[:, ::stride, ::stride] = c @ w2.T
  gx_bound = np.zeros(np.shape(x))
  gx_bound[:, ::stride, ::stride] = (u + cout * u32) * (np.abs(c) @ np.abs(w2).T)
  gw = np.einsum("bhwi,bhwo->io", xs, c)[None, None]
  gw_bound = (u + n * u32) * np.einsum("bhwi,bhwo->io", np.abs(xs), np.abs(c))[None, None]
  return (y, e_y), (gx, gx_bound), (gw, gw_bound)


def assert_vjps_within_bounds(fns, x, w, ct, wants):
  """Each of `fns` (name -> f(x, w)): value and vector-Jacobian products with `ct` of
  x's dtype and the reference's shapes, within the reference's per-element bounds;
  `wants`: ((y, bound), (grad_x, bound), (grad_w, bound)) in float64."""
  for name, f in fns.items():
    for have, (want, bound), what in zip(value_and_vjp(f, ct, x, w), wants,
                                         ("value", "x", "w")):
      assert have.dtype == x.dtype and have.shape == want.shape, (name, what)
      err = np.abs(np.asarray(have, np.float64) - want)
      assert np.all(err <= bound), (name, what, float((err / bound).max()))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cin, cout", [(24, 40), (40, 24)])
def test_pointwise_dot_equals_plain_conv_with_gradients(dtype, stride, cin, cout):
  """Both formulations against a float64 NumPy reference of the same (rounded) inputs,
  within bounds derived from the dtype's rounding and the terms' magnitudes; widening
  and narrowing layers (the hand-written kernel gradient transposes the narrower
  operand, so each takes its own branch)."""
  x, w = _data((2, 7, 6, cin), (1, 1, cin, cout), dtype)
  pad = ((0, 0), (0, 0))
  dot = lambda x, w: conv_formulations.pointwise_conv_dot(x, w, (stride, stride))
  conv = lambda x, w: plain_conv(x, w, (stride, stride), pad)
  out_shape = (2, -(-7 // stride), -(-6 // stride), cout)
  ct = jnp.asarray(np.random.default_rng(5).normal(size=out_shape), dtype)
  assert jax.eval_shape(conv, x, w).shape == out_shape
  assert_vjps_within_bounds({"dot": dot, "conv": conv}, x, w, ct,
                            pointwise_error_bounds(x, w, ct, stride, dtype))


def primitive_names(jaxpr) -> set[str]:
  """The primitives of a jaxpr and of every jaxpr nested in its equations (the bodies
  of custom_vjp calls, pjit, ...)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      if hasattr(param, "eqns") or hasattr(getattr(param, "jaxpr", None), "eqns"):
        names |= primitive_names(param)
  return names


def test_nnx_convs_use_the_cpu_formulations_and_match_plain():
  if jax.default_backend() != "cpu":
    pytest.skip("the alternative formulations are CPU-only")
  x, _ = _data((2, 8, 8, 16), (1,), jnp.float32)
  # 1x1: a dot with its hand-written gradient.
  cases = [(layers.conv2d(16, 32, 1, rngs=nnx.Rngs(0)), "dot_general", 1),
           # Depthwise 3x3: the taps with their hand-written gradient (test_depthwise_vjp.py).
           (layers.conv2d(16, 16, 3, 2, groups=16, rngs=nnx.Rngs(0)), "custom_vjp_call", 16),
           (layers.conv2d(16, 8, 3, rngs=nnx.Rngs(0)), "conv_general_dilated", 1)]
  for conv, primitive, groups in cases:
    names = primitive_names(jax.make_jaxpr(conv)(x))
    assert primitive in names, names
    assert ("conv_general_dilated" in names) == (primitive == "conv_general_dilated")
    k = conv.kernel.shape[0]
    s = conv.strides[0]
    pad = layers.torch_padding(k, s)
    want = plain_conv(x, conv.kernel[...], (s, s), ((pad, pad), (pad, pad)), groups=groups)
    np.testing.assert_allclose(conv(x), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("args,want", [
    # DeepLabV3's ASPP at 8x8 features: rate 12 (and 24, 36) reads padding off the centre.
    ((8, 3, 1, 12, (12, 12)), (1, 1, (0, 0))),
    ((8, 3, 1, 36, (36, 36)), (1, 1, (0, 0))),
    # EfficientNet 5x5 depthwise at dilation 4 on 8x8: the outer taps (offsets +-8) are dead.
    ((8, 5, 1, 4, (8, 8)), (1, 3, (4, 4))),
    # Rate 24 at 32x32: every tap reaches the image somewhere, nothing is dropped.
    ((32, 3, 1, 24, (24, 24)), (0, 2, (24, 24))),
    ((4, 3, 1, 1, (1, 1)), (0, 2, (1, 1))),
    # Asymmetric padding, 4 outputs: tap rows start at -1, 2, 5; the last tap reads
    # rows 5..8 only (all padding), and dropping it takes 3 off the high padding.
    ((4, 3, 1, 3, (1, 5)), (0, 1, (1, 2))),
    # 2 outputs, taps start at -3, 1, 5: both outer taps are dead, but dropping the first
    # would need padding 3 - 4 < 0, so it is kept; the last one goes.
    ((2, 3, 1, 4, (3, 5)), (0, 1, (3, 1))),
])
def test_live_taps_hand_computed(args, want):
  assert conv_formulations.live_taps(*args) == want


@pytest.mark.parametrize("case", [
    # (x shape, kernel shape, stride, dilation, padding, groups)
    ((2, 8, 8, 6), (3, 3, 6, 5), 1, 12, ((12, 12), (12, 12)), 1),   # ASPP rate 12 -> 1x1
    ((2, 8, 8, 6), (3, 3, 6, 5), 1, 24, ((24, 24), (24, 24)), 1),
    ((2, 8, 8, 6), (5, 5, 1, 6), 1, 4, ((8, 8), (8, 8)), 6),        # dilated depthwise
    ((2, 6, 10, 4), (3, 3, 4, 3), 2, 6, ((6, 6), (6, 6)), 1),       # stride 2, non-square
    ((2, 4, 2, 3), (3, 3, 3, 2), 1, (3, 4), ((1, 5), (3, 5)), 1),  # asymmetric padding
])
def test_trimmed_conv_equals_plain_conv_with_gradients(case):
  shape_x, shape_w, stride, dilation, padding, groups = case
  x, w = _data(shape_x, shape_w, jnp.float32, seed=1)
  strides = (stride, stride)
  dil = dilation if isinstance(dilation, tuple) else (dilation, dilation)
  trimmed = lambda x, w: conv_formulations.conv_general_dilated(
      x, w, strides, padding, rhs_dilation=dil, dimension_numbers=DN,
      feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
  plain = lambda x, w: plain_conv(x, w, strides, padding, dil, groups)
  np.testing.assert_allclose(jax.jit(trimmed)(x, w), jax.jit(plain)(x, w), atol=1e-4,
                             rtol=1e-4)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  got = jax.jit(jax.grad(loss(trimmed), argnums=(0, 1)))(x, w)
  want = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(x, w)
  for g, h in zip(got, want):
    assert g.shape == h.shape
    np.testing.assert_allclose(g, h, atol=1e-4, rtol=1e-4)


def test_aspp_conv_at_8x8_runs_as_a_dot_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("the dot formulation is CPU-only")
  conv = layers.conv2d(16, 8, 3, dilation=12, rngs=nnx.Rngs(0))
  x, _ = _data((2, 8, 8, 16), (1,), jnp.float32)
  names = primitive_names(jax.make_jaxpr(conv)(x))
  assert "dot_general" in names and "conv_general_dilated" not in names, names
  want = plain_conv(x, conv.kernel[...], (1, 1), ((12, 12), (12, 12)), (12, 12))
  np.testing.assert_allclose(conv(x), want, atol=1e-4, rtol=1e-4)



def test_kxk_dots_is_chosen_for_wide_stride1_convs_on_cpu_only():
  pick = conv_formulations.conv_formulation
  pad = ((1, 1), (1, 1))

  def kxk(cin, backend="cpu", **kw):
    nhwc = jax.lax.conv_dimension_numbers((2, 8, 8, cin), (3, 3, cin, 32), DN)
    return pick((2, 8, 8, cin), (3, 3, cin, 32), pad, dimension_numbers=nhwc,
                backend=backend, **{"kernel_grad_dots": True, **kw})

  least = conv_formulations.KXK_DOTS_MIN_CHANNELS
  assert kxk(least) == "kxk_dots"
  assert kxk(least, kernel_grad_dots=False) == "native"
  assert kxk(least - 1) == "native"
  assert kxk(least, window_strides=(2, 2)) == "native"
  assert kxk(least, rhs_dilation=(2, 2)) == "native"
  for backend in ("gpu", "tpu"):
    assert kxk(least, backend) == "native"


def test_single_output_kxk_convs_are_chosen_on_cpu_only(monkeypatch):
  """'single_output' for stride-1, undilated kxk convs with one output channel on the
  CPU while the switch is on; every other case stays where it was."""
  def pick(rhs, backend="cpu", **kw):
    nhwc = jax.lax.conv_dimension_numbers((2, 8, 8, 16), rhs, DN)
    return conv_formulations.conv_formulation((2, 8, 8, 16), rhs, ((1, 1), (1, 1)),
                                              dimension_numbers=nhwc, backend=backend, **kw)
  assert pick((3, 3, 16, 1)) == pick((3, 2, 16, 1)) == "single_output"
  assert pick((3, 3, 16, 2)) == "native"
  assert pick((3, 3, 16, 1), window_strides=(2, 2)) == "native"
  assert pick((3, 3, 16, 1), rhs_dilation=(2, 2)) == "native"
  for backend in ("gpu", "tpu"):
    assert pick((3, 3, 16, 1), backend) == "native"
  monkeypatch.setattr(conv_formulations, "single_output", False)
  assert pick((3, 3, 16, 1)) == "native"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape_x,shape_w,padding", [
    ((2, 6, 5, 8), (3, 3, 8, 1), ((1, 1), (1, 1))),
    ((2, 7, 6, 3), (3, 2, 3, 1), ((2, 0), (0, 1))),   # asymmetric kernel and padding
])
def test_single_output_conv_equals_plain_conv_with_gradients(dtype, shape_x, shape_w,
                                                             padding):
  """`single_output_conv` (one dot to the k*k taps' maps, shifted and summed) and XLA's
  convolution against a float64 NumPy reference, values and both gradients."""
  assert_kxk_formulation_matches(conv_formulations.single_output_conv, dtype, shape_x,
                                 shape_w, padding, seed=4)


def assert_kxk_formulation_matches(formulation, dtype, shape_x, shape_w, padding, seed):
  """`formulation(x, w, padding)` and XLA's stride-1 convolution against a float64 NumPy
  reference (`kxk_reference_with_bounds`): values and both gradients."""
  x, w = _data(shape_x, shape_w, dtype, seed=seed)
  conv = lambda x, w: plain_conv(x, w, (1, 1), padding)
  ct = jnp.asarray(np.random.default_rng(seed + 1).normal(
      size=jax.eval_shape(conv, x, w).shape), dtype)
  assert_vjps_within_bounds({"formulation": lambda x, w: formulation(x, w, padding),
                             "conv": conv}, x, w, ct,
                            kxk_reference_with_bounds(x, w, ct, padding, dtype))


@pytest.mark.parametrize("name", sorted(conv_formulations.SWITCH_VARIABLES))
def test_flags_default_when_unset(monkeypatch, name):
  # 1 / 0 and typos: tests/test_env_flags.py.
  variable, default = conv_formulations.SWITCH_VARIABLES[name]
  monkeypatch.delenv(variable, raising=False)
  assert getattr(conv_formulations, name) is None  # not read at import
  assert conv_formulations._switch(name) is default
  monkeypatch.setattr(conv_formulations, name, not default)  # assigned in code: it wins
  monkeypatch.setenv(variable, "1" if default else "0")
  assert conv_formulations._switch(name) is (not default)


def kxk_reference_with_bounds(x, w, ct, padding, dtype):
  """NumPy float64 value and vector-Jacobian products (cotangent `ct`) of a stride-1,
  undilated conv with explicit padding, each with the per-element worst-case bound of
  `pointwise_error_bounds` (n terms accumulated in float32, one rounding to `dtype`)."""
  u, u32 = unit_roundoff(dtype), unit_roundoff(jnp.float32)
  (lo_h, hi_h), (lo_w, hi_w) = padding
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  w64, c = np.asarray(w, np.float64), np.asarray(ct, np.float64)
  kh, kw, cin, cout = w64.shape
  b, ho, wo, _ = c.shape
  y, y_abs = np.zeros(c.shape), np.zeros(c.shape)
  gxp, gxp_abs = np.zeros(xp.shape), np.zeros(xp.shape)
  gw, gw_abs = np.zeros(w64.shape), np.zeros(w64.shape)
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i:i + ho, j:j + wo]
      y += tap @ w64[i, j]
      y_abs += np.abs(tap) @ np.abs(w64[i, j])
      gxp[:, i:i + ho, j:j + wo] += c @ w64[i, j].T
      gxp_abs[:, i:i + ho, j:j + wo] += np.abs(c) @ np.abs(w64[i, j]).T
      gw[i, j] = np.einsum("bhwi,bhwo->io", tap, c)
      gw_abs[i, j] = np.einsum("bhwi,bhwo->io", np.abs(tap), np.abs(c))
  crop = (slice(None), slice(lo_h, xp.shape[1] - hi_h), slice(lo_w, xp.shape[2] - hi_w))
  return ((y, (u + kh * kw * cin * u32) * y_abs),
          (gxp[crop], (u + kh * kw * cout * u32) * gxp_abs[crop]),
          (gw, (u + b * ho * wo * u32) * gw_abs))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape_x,shape_w,padding", [
    ((2, 6, 5, 8), (3, 3, 8, 4), ((1, 1), (1, 1))),
    ((2, 7, 6, 3), (3, 2, 3, 5), ((2, 0), (0, 1))),   # asymmetric kernel and padding
])
def test_kxk_dots_vjp_equals_plain_conv_with_gradients(dtype, shape_x, shape_w, padding):
  """`kxk_conv_dots_vjp` (kernel gradient as k*k dots) and XLA's convolution against a
  float64 NumPy reference, values and both gradients, within dtype-derived bounds."""
  assert_kxk_formulation_matches(conv_formulations.kxk_conv_dots_vjp, dtype, shape_x,
                                 shape_w, padding, seed=2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("skip_channels", [0, 3])
def test_upsampled_skip_conv3x3_equals_conv_of_upsampled_concat(dtype, skip_channels):
  """The sub-pixel decoder conv against a float64 NumPy reference of
  conv3x3(concat([nearest x2 upsample of x, skip])): values and the gradients w.r.t. x,
  the skip and the 3x3 kernel, within the reference's dtype-derived bounds (tripled for
  bfloat16: the folded kernel and the folded kernel gradient are rounded to bfloat16
  once more each); odd map sizes, with and without a skip."""
  cx, cout = 4, 5
  x, w = _data((2, 3, 5, cx), (3, 3, cx + skip_channels, cout), dtype, seed=7)
  rng = np.random.default_rng(8)
  skip = (jnp.asarray(rng.normal(size=(2, 6, 10, skip_channels)), dtype)
          if skip_channels else None)
  ct = jnp.asarray(rng.normal(size=(2, 6, 10, cout)), dtype)
  up = np.repeat(np.repeat(np.asarray(x, np.float64), 2, axis=1), 2, axis=2)
  full = up if skip is None else np.concatenate([up, np.asarray(skip, np.float64)], -1)
  (y, y_bound), (g_full, g_bound), (gw, gw_bound) = kxk_reference_with_bounds(
      full, w, ct, ((1, 1), (1, 1)), dtype)
  # The gradient w.r.t. x sums those of the 2x2 upsampled pixels each pixel became.
  pool = lambda a: a[..., :cx].reshape(2, 3, 2, 5, 2, cx).sum(axis=(2, 4))
  wants = [(y, y_bound), (pool(g_full), pool(g_bound)), (gw, gw_bound)]
  if skip is not None:
    wants.append((g_full[..., cx:], g_bound[..., cx:]))
  scale = 3.0 if dtype == jnp.bfloat16 else 1.0
  if skip is None:
    haves = value_and_vjp(lambda x, w: conv_formulations.upsampled_skip_conv3x3(x, None, w),
                          ct, x, w)
  else:
    haves = value_and_vjp(lambda x, w, s: conv_formulations.upsampled_skip_conv3x3(x, s, w),
                          ct, x, w, skip)
  for have, (want, bound), what in zip(haves, wants, ("value", "x", "kernel", "skip")):
    assert have.dtype == x.dtype and have.shape == want.shape, what
    err = np.abs(np.asarray(have, np.float64) - want)
    assert np.all(err <= scale * bound), (what, float((err / bound).max()))


def test_decoder_block_uses_the_subpixel_conv_on_cpu_only(monkeypatch):
  """`upsample_conv_formulation` per backend and switch; a UNet decoder block gives the
  same output and kernel gradient either way (the sub-pixel form never builds the
  upsampled concat)."""
  from smd_jax.models import unet
  pick = conv_formulations.upsample_conv_formulation
  assert pick("cpu") == "subpixel" and pick("gpu") == pick("tpu") == "native"
  monkeypatch.setattr(conv_formulations, "subpixel_upsample_conv", False)
  assert pick("cpu") == "native"
  if jax.default_backend() != "cpu":
    pytest.skip("the sub-pixel formulation is CPU-only")
  block = unet.DecoderBlock(4, 3, 5, rngs=nnx.Rngs(0))
  x, _ = _data((2, 3, 5, 4), (1,), jnp.float32, seed=9)
  skip, _ = _data((2, 6, 10, 3), (1,), jnp.float32, seed=10)
  loss = lambda block: jnp.sum(jnp.sin(block(x, skip)))
  results = {}
  for subpixel in (True, False):
    monkeypatch.setattr(conv_formulations, "subpixel_upsample_conv", subpixel)
    graphdef, state = nnx.split(block)
    names = primitive_names(jax.make_jaxpr(
        lambda state, x: nnx.merge(graphdef, state)(x, skip))(state, x))
    assert ("concatenate" in names) == (not subpixel), (subpixel, names)
    grads = nnx.grad(loss)(block)
    results[subpixel] = (block(x, skip), grads["conv1"]["conv"]["kernel"][...])
  for a, b in zip(results[True], results[False]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("backend,switch", [("cpu", True), ("cpu", False), ("gpu", True)])
def test_spatial_mean_matches_numpy_with_gradient(monkeypatch, dtype, backend, switch):
  """`spatial_mean`: a dot with ones on the CPU while `pooling_dot` is on, XLA's
  reduction otherwise and on other backends; each within one float32 accumulation of
  H*W terms plus one rounding to `dtype` of the float64 NumPy mean over H, W, and its
  gradient ct / (H*W) at every pixel."""
  monkeypatch.setattr(conv_formulations, "pooling_dot", switch)
  mean = lambda x: conv_formulations.spatial_mean(x, backend)  # new each time: no trace cache
  x, ct = _data((2, 5, 7, 6), (2, 1, 1, 6), dtype, seed=11)
  names = primitive_names(jax.make_jaxpr(mean)(x))
  as_dot = backend == "cpu" and switch
  assert ("dot_general" in names) == as_dot and ("reduce_sum" in names) != as_dot, names
  y, gx = value_and_vjp(mean, ct, x)
  assert y.shape == (2, 1, 1, 6) and y.dtype == dtype and gx.dtype == dtype
  x64, ct64 = np.asarray(x, np.float64), np.asarray(ct, np.float64)
  n = x.shape[1] * x.shape[2]
  want = x64.mean(axis=(1, 2), keepdims=True)
  bound = (unit_roundoff(dtype) * np.abs(want)
           + (n + 1) * unit_roundoff(jnp.float32) * np.abs(x64).mean(axis=(1, 2), keepdims=True))
  assert np.all(np.abs(np.asarray(y, np.float64) - want) <= bound)
  want_g = np.broadcast_to(ct64 / n, x.shape)
  bound_g = 2 * (unit_roundoff(dtype) + unit_roundoff(jnp.float32)) * np.abs(want_g)
  assert np.all(np.abs(np.asarray(gx, np.float64) - want_g) <= bound_g)


def test_squeeze_excite_and_aspp_pool_through_spatial_mean(monkeypatch):
  """The SE block and DeepLabV3's image pooling take their mean from `spatial_mean`:
  the same values with the CPU's dot form on and off."""
  from smd_jax.models import deeplab, efficientnet
  modules = {"se": efficientnet.SqueezeExcite(6, 2, rngs=nnx.Rngs(0)),
             "aspp": deeplab.ASPPPooling(6, 4, 1, rngs=nnx.Rngs(0))}
  modules["aspp"].eval()
  x, _ = _data((2, 5, 7, 6), (1,), jnp.float32, seed=12)
  calls = []
  original = conv_formulations.spatial_mean
  monkeypatch.setattr(conv_formulations, "spatial_mean",
                      lambda x: calls.append(x.shape) or original(x))
  for name, module in modules.items():
    outs = []
    for on in (True, False):
      monkeypatch.setattr(conv_formulations, "pooling_dot", on)
      outs.append(module(x))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6, err_msg=name)
  assert calls == [x.shape] * 4
