"""Small building blocks shared by the encoders and decoders (NHWC, Flax NNX).

Every helper takes an optional compute ``dtype`` (e.g. ``jnp.bfloat16``); parameters
are always stored in float32 so that optimizer updates stay exact under mixed precision.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = Any

# PyTorch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (weight of the *new* batch
# statistic). Flax's momentum is the weight of the *old* running value, hence 0.9.
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


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
    dtype: Dtype | None = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """NHWC conv with PyTorch-style symmetric padding; kernel [k, k, in/groups, out].

  ``groups == in_channels == out_channels`` gives a depthwise conv, lowered by XLA
  through ``feature_group_count`` (no per-channel loop).
  """
  pad = torch_padding(kernel_size, stride, dilation)
  kwargs = {} if kernel_init is None else {'kernel_init': kernel_init}
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
      rngs=rngs,
      **kwargs,
  )


def batch_norm(
    num_features: int, *, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> nnx.BatchNorm:
  """BatchNorm over the channel (last) axis with PyTorch's eps and momentum.

  Batch statistics are always reduced in float32 by Flax, whatever ``dtype`` is.
  Starts in train mode (batch statistics); ``model.eval()`` switches to running ones.
  Note: PyTorch updates ``running_var`` with the unbiased batch variance, Flax with the
  biased one; the difference is a factor n/(n-1) with n = B*H*W, negligible here.
  """
  return nnx.BatchNorm(
      num_features,
      use_running_average=False,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPS,
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
  )


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour (torch ``interpolate`` nearest).

  Broadcast + reshape: a single copy that XLA fuses, no gather.
  """
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def canonical_dtype(dtype: str | Dtype | None) -> Dtype | None:
  """'float32' | 'bfloat16' | 'float16' | a numpy/jnp dtype | None -> jnp dtype or None."""
  if dtype is None:
    return None
  if isinstance(dtype, str):
    known = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
    if dtype not in known:
      raise ValueError(f'Unknown dtype {dtype!r}; known: {sorted(known)}')
    return known[dtype]
  return jnp.dtype(dtype).type
