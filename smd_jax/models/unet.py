"""UNet decoder as in segmentation-models-pytorch 0.3.3 (``smp.Unet``), NHWC, Flax NNX.

smp's layout: the encoder's deepest feature enters the first block (``center`` is the
identity); block i upsamples x2 (nearest), concatenates the encoder skip of matching
stride (features in reverse order; the last block has none) and applies
conv3x3(no bias)-BN-ReLU twice. With an encoder whose first feature is at stride 2, the
last block brings the output back to the input resolution.

On the CPU backend the first conv of a block reads x at its own resolution instead of
the upsampled concat (`conv_formulations.upsampled_skip_conv3x3`: the same convolution
up to summation order, 4 kernel taps per output pixel for the upsampled part instead of
9); the parameters and their layout are smp's either way.

Names follow smp (``blocks[i].conv1``, ``blocks[i].conv2``); smp's ``Conv2dReLU`` is an
``nn.Sequential`` so its ``conv1.0`` / ``conv1.1`` are our ``conv1.conv`` / ``conv1.bn``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from smd_jax.models import conv_formulations
from smd_jax.models.layers import (Dtype, batch_norm, conv2d, upsample_nearest_2x,
                                   variance_scaling)

UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)

# smp ``initialize_decoder``: kaiming_uniform_(fan_in, relu), zero bias, BN 1/0.
_kaiming_uniform = variance_scaling(2.0, "fan_in", "uniform")


class Conv2dReLU(nnx.Module):
  """conv3x3 (no bias) -> BatchNorm -> ReLU."""

  def __init__(self, in_channels: int, out_channels: int, *, dtype: Dtype | None = None,
               rngs: nnx.Rngs):
    self.conv = conv2d(in_channels, out_channels, 3, kernel_init=_kaiming_uniform,
                       dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))

  def upsampled(self, x: jax.Array, skip: jax.Array | None) -> jax.Array:
    """``self(concat([upsample_nearest_2x(x), skip]))`` with the conv computed at x's
    resolution (`conv_formulations.upsampled_skip_conv3x3`); the conv's dtype rules."""
    x, kernel = nnx.nn.dtypes.promote_dtype((x, self.conv.kernel[...]), dtype=self.conv.dtype)
    if skip is not None:
      skip = skip.astype(x.dtype)
    y = conv_formulations.upsampled_skip_conv3x3(x, skip, kernel, self.conv.precision)
    return jax.nn.relu(self.bn(y))


class DecoderBlock(nnx.Module):
  """Upsample x2 -> [concat skip] -> Conv2dReLU -> Conv2dReLU (on the CPU, the first
  three as `Conv2dReLU.upsampled`)."""

  def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels, dtype=dtype,
                            rngs=rngs)
    self.conv2 = Conv2dReLU(out_channels, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
    if conv_formulations.upsample_conv_formulation() == "subpixel":
      return self.conv2(self.conv1.upsampled(x, skip))
    x = upsample_nearest_2x(x)
    if skip is not None:
      # Both are `dtype` under mixed precision; the cast only guards against a float32
      # skip silently widening the concat (and the next conv's input) to float32.
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    return self.conv2(self.conv1(x))


class UnetDecoder(nnx.Module):
  """UNet decoder over encoder features ordered shallow -> deep.

  Args:
    encoder_channels: channels of the encoder features, shallow -> deep (e.g.
      (24, 32, 56, 160, 448) for EfficientNet-B4); one decoder block per feature.
    decoder_channels: output channels of the blocks (smp default 256..16).
    dtype: compute dtype; params are float32.

  Class attributes read by ``build_model``: ``output_stride`` (32: the encoder is
  not dilated), ``head_kernel_size`` (3) and ``head_upsampling`` (1: none), as smp's
  ``Unet`` builds its ``SegmentationHead``.

  Attributes:
    out_channels: channels of the output map (``decoder_channels[-1]``).
  """

  output_stride = 32
  head_kernel_size = 3
  head_upsampling = 1

  def __init__(self, encoder_channels: Sequence[int],
               decoder_channels: Sequence[int] = UNET_DECODER_CHANNELS, *,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    if len(encoder_channels) != len(decoder_channels):
      raise ValueError(
          f"UNet needs one decoder block per encoder feature, got "
          f"{len(encoder_channels)} features and decoder_channels={decoder_channels}")
    deep_first = list(encoder_channels)[::-1]
    in_chs = [deep_first[0]] + list(decoder_channels[:-1])
    skip_chs = deep_first[1:] + [0]
    self.blocks = nnx.List([
        DecoderBlock(i, s, o, dtype=dtype, rngs=rngs)
        for i, s, o in zip(in_chs, skip_chs, decoder_channels)
    ])
    self.out_channels: int = decoder_channels[-1]

  def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
    """features: encoder maps shallow -> deep, strides 2..32 -> [B, H, W, out_channels]
    at twice the resolution of the shallowest feature (the input resolution)."""
    deep_first = list(features)[::-1]
    x, skips = deep_first[0], deep_first[1:]
    for i, block in enumerate(self.blocks):
      x = block(x, skips[i] if i < len(skips) else None)
    return x
