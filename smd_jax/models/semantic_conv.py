"""The paper's 'semantic convolution' input block (NHWC, Flax NNX).

Sec. 3 of the paper: the semantic map is first fed through "an MBConv block, expanding
the output channels to 3", and the result is concatenated with the RGB image before
the encoder; the block is learned jointly with the model. Layout after the reference
implementation (charyyev/semantic_md, ``SemanticConvolutionModel``):

  conv3x3 (k -> 8, no bias) -> BN
  -> torchvision ``MBConv`` (8 -> 8: ``MBConvConfig(expand_ratio=6, kernel=3,
     stride=1, input_channels=1, out_channels=3, width_mult=1.4)`` rounds both widths
     to 8 with ``_make_divisible``): 1x1 expand to 48 -> BN-SiLU -> 3x3 depthwise ->
     BN-SiLU -> SE (squeeze max(1, 8 // 4) = 2, SiLU, sigmoid gate) -> 1x1 project to
     8 -> BN, + identity with stochastic depth 0.2 ('row' mode: per sample, train only)
  -> conv1x1 (8 -> 3, no bias) -> BN -> sigmoid.

The reference feeds the raw label map as one float channel (values -1, 1..40, not
normalised), as the paper row does (``semantic_transform="labels_raw"``, k = 1); k is
the number of semantic input channels, e.g. 40 for our one-hot variant
(configs/paper/variants/unet_semconv_onehot40.py). PyTorch BatchNorm2d defaults (eps 1e-5,
momentum 0.1) and PyTorch's default conv init, as in the reference, which builds the
block from plain torch / torchvision modules.

The MBConv is `efficientnet.InvertedResidual` (timm's MBConv computes exactly what
torchvision's does); torchvision state-dict names map as ``block.0.0/1 -> conv_pw /
bn1``, ``block.1.0/1 -> conv_dw / bn2``, ``block.2.fc1/fc2 -> se.conv_reduce /
conv_expand``, ``block.3.0/1 -> conv_pwl / bn3``.
"""

from __future__ import annotations

import jax
from flax import nnx

from smd_jax.models.efficientnet import InvertedResidual
from smd_jax.models.layers import Dtype, batch_norm, conv2d

HIDDEN_CHANNELS = 8
EXPAND_RATIO = 6
STOCHASTIC_DEPTH = 0.2


class SemanticConv(nnx.Module):
  """``[B, H, W, in_channels] -> [B, H, W, out_channels]`` in (0, 1).

  Args:
    in_channels: semantic input channels k.
    out_channels: channels handed to the encoder next to RGB (3).
    hidden_channels, expand_ratio, stochastic_depth: MBConv width (8), expansion
      (6) and residual drop rate (0.2; draws from the 'dropout' stream in train mode).
    dtype: compute dtype; params are float32.
  """

  def __init__(self, in_channels: int, out_channels: int = 3, *,
               hidden_channels: int = HIDDEN_CHANNELS, expand_ratio: int = EXPAND_RATIO,
               stochastic_depth: float = STOCHASTIC_DEPTH, dtype: Dtype | None = None,
               rngs: nnx.Rngs):
    if in_channels < 1:
      raise ValueError(f"SemanticConv needs >= 1 input channel, got {in_channels}")
    self.conv_in = conv2d(in_channels, hidden_channels, 3, dtype=dtype, rngs=rngs)
    self.bn_in = batch_norm(hidden_channels, dtype=dtype, rngs=rngs)
    # torchvision SE squeeze = max(1, in // 4); InvertedResidual reduces to
    # round(mid * se_ratio / expansion) = round(in * se_ratio).
    se_ratio = max(1, hidden_channels // 4) / hidden_channels
    self.mbconv = InvertedResidual(hidden_channels, hidden_channels, 3, 1, expand_ratio,
                                   se_ratio=se_ratio, drop_path_rate=stochastic_depth,
                                   init="torch", dtype=dtype, rngs=rngs)
    self.conv_out = conv2d(hidden_channels, out_channels, 1, dtype=dtype, rngs=rngs)
    self.bn_out = batch_norm(out_channels, dtype=dtype, rngs=rngs)
    self.in_channels = in_channels
    self.out_channels = out_channels

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.mbconv(self.bn_in(self.conv_in(x)))
    return jax.nn.sigmoid(self.bn_out(self.conv_out(x)))


def semantic_conv(in_channels: int, **kwargs) -> SemanticConv:
  """INPUT_BLOCKS constructor: ``(in_channels, *, dtype, rngs) -> module`` with
  ``out_channels``."""
  return SemanticConv(in_channels, **kwargs)
