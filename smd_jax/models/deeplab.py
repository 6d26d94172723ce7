"""DeepLabV3 decoder as in segmentation-models-pytorch 0.3.3 (``smp.DeepLabV3``), NHWC.

smp's layout (``decoders/deeplabv3/decoder.py``): only the encoder's deepest feature is
used, taken at output stride 8 (the encoder is dilated, see ``output_stride`` of the
encoders). ``DeepLabV3Decoder`` is ``Sequential(ASPP, conv3x3, BN, ReLU)``; ``ASPP``
runs five branches on that feature and concatenates them:

* 1x1 conv -> BN -> ReLU;
* three 3x3 convs dilated by the atrous rates (12, 24, 36), padding = rate (smp
  ``ASPPConv``; DeepLabV3 uses separable=False) -> BN -> ReLU;
* image pooling: global average -> 1x1 conv -> BN -> ReLU -> bilinear resize back
  (from 1x1 that is a broadcast);

then ``project``: 1x1 conv (5*256 -> 256) -> BN -> ReLU -> Dropout(0.5). All convs have
no bias. The head that follows (``SegmentationHead(kernel_size=1, upsampling=8)``) is
built by ``build_model`` from this class's ``head_kernel_size`` / ``head_upsampling``.

Names: smp's Sequential indices become names; the state-dict map is
``decoder.0 -> aspp``, ``decoder.0.convs.{i}.0/1 -> aspp.convs[i].conv/bn`` (the
pooling branch ``convs.4.1/2``), ``decoder.0.project.0/1 -> aspp.project.conv/bn``,
``decoder.1 -> conv``, ``decoder.2 -> bn``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from smd_jax.models import conv_formulations
from smd_jax.models.layers import Dtype, batch_norm, conv2d, variance_scaling

DEEPLAB_CHANNELS = 256
ATROUS_RATES = (12, 24, 36)
ASPP_DROPOUT = 0.5

# smp ``initialize_decoder`` (run on every smp decoder): kaiming_uniform_(fan_in, relu)
# convs, zero bias, BN 1/0.
_kaiming_uniform = variance_scaling(2.0, "fan_in", "uniform")


class ConvBNReLU(nnx.Module):
  """conv kxk (no bias, dilation d, padding d * (k - 1) // 2) -> BatchNorm -> ReLU."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
               dilation: int = 1, *, kernel_init: nnx.Initializer = _kaiming_uniform,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    self.conv = conv2d(in_channels, out_channels, kernel_size, dilation=dilation,
                       kernel_init=kernel_init, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class ASPPPooling(ConvBNReLU):
  """Image-level branch: mean over H, W -> 1x1 conv -> BN -> ReLU -> broadcast back
  (torch resizes the 1x1 map bilinearly, which is the same)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = conv_formulations.spatial_mean(x)
    return jnp.broadcast_to(super().__call__(pooled), x.shape[:3] + (self.bn.num_features,))


class ASPP(nnx.Module):
  """Atrous spatial pyramid pooling (smp ``ASPP``, separable=False)."""

  def __init__(self, in_channels: int, out_channels: int = DEEPLAB_CHANNELS,
               atrous_rates: Sequence[int] = ATROUS_RATES, *, dtype: Dtype | None = None,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.convs = nnx.List(
        [ConvBNReLU(in_channels, out_channels, 1, **kw)]
        + [ConvBNReLU(in_channels, out_channels, 3, rate, **kw) for rate in atrous_rates]
        + [ASPPPooling(in_channels, out_channels, 1, **kw)])
    self.project = ConvBNReLU((len(atrous_rates) + 2) * out_channels, out_channels, 1, **kw)
    # Element-wise nn.Dropout(0.5); active in train mode, drawing from the 'dropout'
    # stream of rngs (default stream when the Rngs has none).
    self.dropout = nnx.Dropout(ASPP_DROPOUT, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.concatenate([branch(x) for branch in self.convs], axis=-1)
    return self.dropout(self.project(x))


class DeepLabV3Decoder(nnx.Module):
  """ASPP -> conv3x3 (no bias) -> BN -> ReLU on the deepest encoder feature.

  Args:
    encoder_channels: channels of the encoder features, shallow -> deep; only the
      last is used.
    decoder_channels: ASPP / output width (smp default 256); an int or a 1-tuple
      (``build_model`` passes config sequences as tuples).
    atrous_rates: dilations of the three 3x3 ASPP branches.
    dtype: compute dtype; params are float32.

  Class attributes read by ``build_model``: ``output_stride`` (8: the encoder is
  built dilated), ``head_kernel_size`` (1) and ``head_upsampling`` (8, bilinear with
  align_corners=True, smp's ``nn.UpsamplingBilinear2d``).

  Init: smp ``initialize_decoder``: kaiming_uniform_(fan_in, relu) convs, BN 1/0.

  Attributes:
    out_channels: channels of the output map (at 1/8 of the input resolution).
  """

  output_stride = 8
  head_kernel_size = 1
  head_upsampling = 8

  def __init__(self, encoder_channels: Sequence[int],
               decoder_channels: int | Sequence[int] = DEEPLAB_CHANNELS,
               atrous_rates: Sequence[int] = ATROUS_RATES, *, dtype: Dtype | None = None,
               rngs: nnx.Rngs):
    if not isinstance(decoder_channels, int):
      if len(decoder_channels) != 1:
        raise ValueError(f"DeepLabV3 takes one decoder width, got {decoder_channels}")
      (decoder_channels,) = decoder_channels
    self.aspp = ASPP(encoder_channels[-1], decoder_channels, atrous_rates, dtype=dtype,
                     rngs=rngs)
    self.conv = conv2d(decoder_channels, decoder_channels, 3, kernel_init=_kaiming_uniform,
                       dtype=dtype, rngs=rngs)
    self.bn = batch_norm(decoder_channels, dtype=dtype, rngs=rngs)
    self.out_channels: int = decoder_channels

  def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
    """features: encoder maps shallow -> deep -> [B, H/8, W/8, out_channels]."""
    return jax.nn.relu(self.bn(self.conv(self.aspp(features[-1]))))
