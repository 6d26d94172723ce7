"""Small building blocks shared by the encoders and decoders (NHWC, Flax NNX).

Every helper takes an optional compute ``dtype`` (e.g. ``jnp.bfloat16``); parameters
are always stored in float32 so that optimizer updates stay exact under mixed precision.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smd_jax.models.conv_formulations import conv_general_dilated

Dtype = Any

# PyTorch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (weight of the *new* batch
# statistic). Flax's momentum is the weight of the *old* running value, hence 0.9.
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


# ----------------------------------------------------------------------------------
# Initializers.
#
# Flax's stock initializers compile one small XLA program per distinct parameter
# shape; on a 2-core CPU each compile costs ~0.4 s, and EfficientNet-B4 + UNet has ~90
# distinct shapes (a 40 s model build; one jitted init is even slower to compile). Here
# every draw comes from one fixed-size program (compiled once per distribution): a
# tensor takes ceil(size / chunk) chunks from fold_in(key, i), concatenated and sliced
# on the host when the key is concrete. Values are identical whether the init runs
# eagerly or traced (jit / eval_shape) when both compile at the same optimisation level
# (XLA's default; jax 0.10's normal draws can differ in the last bit between levels).

_CHUNK = 1 << 16


def _standard_chunk(key: jax.Array, index: jax.Array, distribution: str) -> jax.Array:
  key = jax.random.fold_in(key, index)
  if distribution == "normal":
    return jax.random.normal(key, (_CHUNK,), jnp.float32)
  return jax.random.uniform(key, (_CHUNK,), jnp.float32, -1.0, 1.0)


# XLA's default optimisation level, which eager draws on the CPU compile at whatever
# XLA_FLAGS ask (`_chunk_program`).
CHUNK_COMPILER_OPTIONS = {"xla_backend_optimization_level": 3}


@functools.cache
def _chunk_program(platform: str):
  """`_standard_chunk` jitted for eager draws on `platform`, on the CPU with
  `CHUNK_COMPILER_OPTIONS`: it runs once per 65,536 values (~440 times for a b4
  DeepLabV3), and unoptimised (the tests compile at level 0) a chunk took 4.5 ms instead
  of 0.8 ms, ~8% of the test suite's time."""
  options = CHUNK_COMPILER_OPTIONS if platform == "cpu" else None
  return jax.jit(_standard_chunk, static_argnames=("distribution",), compiler_options=options)


def variance_scaling(scale: float, mode: str, distribution: str) -> nnx.Initializer:
  """Like ``jax.nn.initializers.variance_scaling`` for HWIO kernels / [in, out] weights.

  ``distribution``: 'normal' (untruncated, std sqrt(scale / fan), as torch ``normal_``
  and kaiming_normal_) or 'uniform' (bound sqrt(3 scale / fan), as torch
  ``kaiming_uniform_`` / ``xavier_uniform_``). ``mode``: 'fan_in' | 'fan_out' |
  'fan_avg', with fan = receptive field size times in (per group) / out features.
  """
  if distribution not in ("normal", "uniform"):
    raise ValueError(f"distribution must be normal or uniform, got {distribution!r}")
  if mode not in ("fan_in", "fan_out", "fan_avg"):
    raise ValueError(f"mode must be fan_in, fan_out or fan_avg, got {mode!r}")

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    # Multiplier of a standard draw: N(0, 1) -> std; U(-1, 1) (variance 1/3) -> bound.
    multiplier = math.sqrt(scale / fan) * (math.sqrt(3.0) if distribution == "uniform" else 1.0)
    return _scaled_draws(key, shape, distribution, multiplier, dtype)

  return init


def _scaled_draws(key: jax.Array, shape: tuple[int, ...], distribution: str,
                  multiplier: float, dtype: Any) -> jax.Array:
  """``multiplier`` times standard normal / U(-1, 1) draws of ``shape``."""
  size = math.prod(shape)
  num_chunks = -(-size // _CHUNK)
  if isinstance(key, jax.core.Tracer):
    # One batched op in the traced program (vmap over fold_in indices gives the
    # same numbers as the eager loop below).
    chunks = jax.vmap(_standard_chunk, in_axes=(None, 0, None))(
        key, jnp.arange(num_chunks), distribution)
    return (chunks.reshape(-1)[:size].reshape(shape) * multiplier).astype(dtype)
  # Eagerly, a Python loop reuses the single compiled chunk program.
  chunk = _chunk_program(next(iter(key.devices())).platform)
  draws = np.concatenate([np.asarray(chunk(key, i, distribution)) for i in range(num_chunks)])
  return jnp.asarray(draws[:size].reshape(shape) * multiplier, dtype=dtype)


def constant_init(value: float) -> nnx.Initializer:
  """Constant initializer built on the host (no per-shape XLA compile when eager)."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    del key
    return jnp.asarray(np.full(shape, value, dtype=np.float32), dtype=dtype)

  return init


def uniform_init(bound: float) -> nnx.Initializer:
  """U(-bound, bound) of any shape (e.g. torch's default conv bias init, bound
  1/sqrt(fan_in)), drawn from the same single compiled chunk program as
  `variance_scaling`."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return _scaled_draws(key, shape, "uniform", bound, dtype)

  return init


def torch_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
  """Symmetric padding per side that PyTorch layers (timm ``get_padding``) use.

  ``((stride - 1) + dilation * (kernel_size - 1)) // 2`` each side, also for stride 2.
  This differs from TF/'SAME' padding (asymmetric for stride 2), and matching it is
  what makes weights imported from timm/smp give identical outputs.
  """
  return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    groups: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    kernel_init: nnx.Initializer | None = None,
    bias_init: nnx.Initializer | None = None,
    dtype: Dtype | None = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """NHWC conv with PyTorch-style symmetric padding; kernel [k, k, in/groups, out].

  Padding is `torch_padding(kernel_size, stride, dilation)` per side: for stride 1 this
  is ``dilation * (k - 1) // 2``, what torchvision / smp (``replace_strides_with_
  dilation``) and timm give dilated convs. ``groups == in_channels == out_channels``
  gives a depthwise conv: XLA's grouped convolution (``feature_group_count``) on
  GPU/TPU, `conv_formulations.depthwise_conv_taps` (or `depthwise_conv_vjp`) on CPU.
  ``bias_init`` defaults to zeros.
  """
  pad = torch_padding(kernel_size, stride, dilation)
  if kernel_init is None:  # torch's default conv init: kaiming_uniform_(a=sqrt(5))
    kernel_init = variance_scaling(1.0 / 3.0, "fan_in", "uniform")
  return nnx.Conv(
      in_channels,
      out_channels,
      kernel_size=(kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=(dilation, dilation),
      feature_group_count=groups,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=bias_init or constant_init(0.0),
      conv_general_dilated=conv_general_dilated,
      rngs=rngs,
  )


class BatchNorm(nnx.Module):
  """BatchNorm over the channel (last) axis, PyTorch ``BatchNorm2d`` semantics.

  Train mode (``use_running_average=False``, set by ``model.train()``): normalises with
  the batch statistics over all other axes (reduced in float32 whatever the compute
  dtype) and updates the running ones, ``running = momentum * running + (1 - momentum)
  * batch``. Eval mode (``model.eval()``): uses the running statistics.

  Variables: ``scale``/``bias`` (Param; torch ``weight``/``bias``), ``mean``/``var``
  (BatchStat; torch ``running_mean``/``running_var``).

  Why not ``nnx.BatchNorm``: in flax 0.12 its running-stat assignment probes
  ``tracer.sharding``, which builds an O(program size) error message on every BN
  layer: tracing the EfficientNet-B4 UNet train step took 25 s instead of 7.5 s.
  As in PyTorch, the batch is normalised with the biased variance and the running
  variance is updated with the unbiased one (factor n/(n-1), n = B*H*W); the
  variance is E[x^2] - E[x]^2 in float32, as in flax's default.

  Args:
    axis_name: mesh/pmap axis to average the statistics over inside ``shard_map`` /
      ``pmap``; not needed under ``jax.jit`` with globally sharded arrays.
  """

  def __init__(self, num_features: int, *, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPS, use_running_average: bool = False,
               axis_name: str | None = None, dtype: Dtype | None = None,
               rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init; kept for a uniform layer signature
    self.scale = nnx.Param(constant_init(1.0)(None, (num_features,)))
    self.bias = nnx.Param(constant_init(0.0)(None, (num_features,)))
    self.mean = nnx.BatchStat(constant_init(0.0)(None, (num_features,)))
    self.var = nnx.BatchStat(constant_init(1.0)(None, (num_features,)))
    self.num_features = num_features
    self.momentum = momentum
    self.epsilon = epsilon
    self.use_running_average = use_running_average
    self.axis_name = axis_name
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., C] -> same shape, in ``dtype`` (or x's dtype promoted to float32)."""
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = jnp.mean(xf, axes)
      mean_sq = jnp.mean(jnp.square(xf), axes)
      if self.axis_name is not None:
        mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      n = x.size // x.shape[-1]
      if self.axis_name is not None:
        n = n * jax.lax.psum(1, self.axis_name)
      unbiased = var * n / jnp.maximum(n - 1, 1)
      m = self.momentum
      # set_value (not `[...] =`): see the class docstring.
      self.mean.set_value(m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean))
      self.var.set_value(m * self.var[...] + (1 - m) * jax.lax.stop_gradient(unbiased))
    # Folded affine transform, computed in float32 and cast once (XLA fuses it).
    inv = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
    shift = self.bias[...] - mean * inv
    out_dtype = self.dtype or jnp.promote_types(x.dtype, jnp.float32)
    return (x * inv + shift).astype(out_dtype)


def batch_norm(num_features: int, *, dtype: Dtype | None = None,
               rngs: nnx.Rngs | None = None) -> BatchNorm:
  """BatchNorm with PyTorch's eps (1e-5) and momentum (0.1, i.e. 0.9 here), starting in
  train mode like a fresh PyTorch module."""
  return BatchNorm(num_features, dtype=dtype, rngs=rngs)


def drop_path(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
  """Stochastic depth: drops a whole residual branch per sample in train mode and
  rescales the kept ones by 1/(1 - rate) (timm ``drop_path`` with scale_by_keep,
  torchvision ``StochasticDepth(mode='row')``). None when rate <= 0, so a model
  without it has no RNG state; otherwise draws from the 'dropout' stream of rngs."""
  if rate <= 0.0:
    return None
  return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch ``MaxPool2d(kernel_size=3, stride=2, padding=1)`` on NHWC (padding never
  wins: it is -inf, as in PyTorch). [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]."""
  # A Python-scalar init lets lax pick reduce_window_max, which has a gradient.
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max,
                               (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def _align_corners_taps(in_size: int, out_size: int):
  # PyTorch upsample_bilinear2d, align_corners=True (aten UpSample.h
  # area_pixel_compute_scale / compute_indices_weights_linear): source position
  # dst * (in - 1) / (out - 1); taps floor(src) and floor(src) + 1 clamped to the
  # last row; weight of the second tap src - floor(src). Host numpy, float32 like
  # torch's float opmath.
  scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
  src = np.arange(out_size, dtype=np.float32) * scale
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(np.float32)).astype(np.float32)
  return lo, hi, frac


def upsample_bilinear_align_corners(x: jax.Array, scale: int) -> jax.Array:
  """[B, H, W, C] -> [B, scale*H, scale*W, C], bilinear with align_corners=True:
  torch ``nn.UpsamplingBilinear2d(scale_factor=scale)`` (what smp's
  ``SegmentationHead(upsampling=8)`` of DeepLabV3 uses).

  Two static gathers + lerps per axis (weights computed on the host), so no matmul:
  exact in float32 on every backend (a TF32 matmul on GPU would not be).
  """
  _, h, w, _ = x.shape
  # Width first, then height: torch's w0 * x00 + w1 * x01 inside the row lerp.
  for axis, size in ((2, w), (1, h)):
    lo, hi, frac = _align_corners_taps(size, size * scale)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    weight_dtype = jnp.promote_types(x.dtype, jnp.float32)
    w1 = jnp.asarray(frac.reshape(shape), weight_dtype)
    w0 = jnp.asarray((np.float32(1) - frac).reshape(shape), weight_dtype)
    x = (jnp.take(x, lo, axis=axis) * w0 + jnp.take(x, hi, axis=axis) * w1).astype(x.dtype)
  return x


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour (torch ``interpolate`` nearest).

  Broadcast + reshape: a single copy that XLA fuses, no gather.
  """
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


# Compute dtypes by config name (`model.dtype`); parameters stay float32 whatever is chosen.
DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
                            "float16": jnp.float16}


def canonical_dtype(dtype: str | Dtype | None) -> Dtype | None:
  """'float32' | 'bfloat16' | 'float16' | a numpy/jnp dtype | None -> jnp dtype or None."""
  if dtype is None:
    return None
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"Unknown dtype {dtype!r}; known: {sorted(DTYPES)}")
    return DTYPES[dtype]
  return jnp.dtype(dtype).type
