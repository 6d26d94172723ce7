"""ResNet-50 feature encoder in torchvision's layout (NHWC, Flax NNX).

Mirrors torchvision's ``resnet50`` (ResNet v1.5) as segmentation-models-pytorch 0.3.3
wraps it for ``smp.Unet('resnet50')`` / ``smp.DeepLabV3('resnet50')``:

* stem: conv1 7x7 stride 2 (no bias) -> bn1 -> ReLU, then max pool 3x3 stride 2 pad 1;
* layer1..layer4 of [3, 4, 6, 3] Bottleneck blocks (1x1 -> 3x3 -> 1x1 x4 expansion,
  widths 64/128/256/512), the stride on the 3x3 conv (v1.5), and a ``downsample``
  shortcut (1x1 conv + BN) on the first block of each layer;
* BatchNorm eps 1e-5 / momentum 0.1; init kaiming_normal_(fan_out, relu), BN 1/0
  (torchvision ``ResNet.__init__``, ``zero_init_residual=False``);
* no avgpool / fc (smp deletes them);
* attribute names equal torchvision's state-dict names (``conv1``, ``bn1``,
  ``layer3[2].conv2``, ``layer1[0].downsample[0]``), so a torchvision / smp checkpoint
  maps over by renaming ``weight -> kernel`` / ``scale`` (BN), ``running_mean/var ->
  mean/var`` and transposing conv kernels OIHW -> HWIO.

Features, as smp's encoder returns them without its stride-1 identity entry (smp's
decoders drop that one): relu(bn1(conv1(x))) at stride 2 (64 channels), then the
outputs of layer1..layer4 at strides 4, 8, 16, 32 (256, 512, 1024, 2048 channels).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from smd_jax.models.layers import (Dtype, batch_norm, conv2d, drop_path, max_pool_3x3_s2,
                                   variance_scaling)

RESNET50_LAYERS = (3, 4, 6, 3)
BOTTLENECK_EXPANSION = 4
STEM_CHANNELS = 64

# smp ``EncoderMixin.make_dilated``: output stride -> dilation of (layer3, layer4).
# Every conv in a dilated layer gets stride 1 and that dilation, the first block's
# included (smp ``replace_strides_with_dilation``; unlike torchvision's
# ``replace_stride_with_dilation``, whose first block keeps the previous dilation).
LAYER_DILATIONS = {32: (1, 1), 16: (1, 2), 8: (2, 4)}

# torchvision ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nnx.Module):
  """torchvision ``Bottleneck``: conv1 1x1 -> BN-ReLU -> conv2 3x3 (stride, dilation)
  -> BN-ReLU -> conv3 1x1 (x4) -> BN, plus shortcut (``downsample`` = 1x1 conv + BN
  when the shape changes), then ReLU."""

  def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1, *,
               drop_path_rate: float = 0.0, dtype: Dtype | None = None, rngs: nnx.Rngs):
    out_channels = width * BOTTLENECK_EXPANSION
    conv = lambda i, o, k, s=1, d=1: conv2d(i, o, k, s, dilation=d, kernel_init=_conv_init,
                                            dtype=dtype, rngs=rngs)
    self.conv1 = conv(in_channels, width, 1)
    self.bn1 = batch_norm(width, dtype=dtype, rngs=rngs)
    self.conv2 = conv(width, width, 3, stride, dilation)
    self.bn2 = batch_norm(width, dtype=dtype, rngs=rngs)
    self.conv3 = conv(width, out_channels, 1)
    self.bn3 = batch_norm(out_channels, dtype=dtype, rngs=rngs)
    if stride != 1 or in_channels != out_channels:
      # nn.Sequential(conv1x1, BN) in torchvision: names downsample.0 / downsample.1.
      self.downsample = nnx.List([conv(in_channels, out_channels, 1, stride),
                                  batch_norm(out_channels, dtype=dtype, rngs=rngs)])
    else:
      self.downsample = None
    # Not in torchvision; timm's ResNet puts drop path at the same place.
    self.drop_path = drop_path(drop_path_rate, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    x = self.bn3(self.conv3(x))
    if self.downsample is not None:
      conv, bn = self.downsample
      shortcut = bn(conv(shortcut))
    if self.drop_path is not None:
      x = self.drop_path(x)
    return jax.nn.relu(x + shortcut)


class ResNet(nnx.Module):
  """ResNet (Bottleneck) feature extractor: ``x [B, H, W, C_in] -> 5 maps`` at
  strides 2, 4, 8, 16, 32 (2, 4, 8, 8, 8 with ``output_stride=8``).

  Args:
    layers: blocks per layer, (3, 4, 6, 3) for ResNet-50.
    in_channels: input channels of conv1 (3 for RGB, more with semantic inputs).
    drop_path_rate: stochastic depth of the last block, linearly increasing from 0
      over the blocks (timm ResNet's schedule); 0 (torchvision/smp) adds no RNG state.
    output_stride: 32 (default), 16 or 8: layers past it run at stride 1 with
      dilation, as smp's ``make_dilated`` (see ``LAYER_DILATIONS``); same parameters.
    dtype: compute dtype; params are float32.

  Attributes:
    out_channels: (64, 256, 512, 1024, 2048) for ResNet-50.
    reductions: strides of the features w.r.t. the input.
  """

  def __init__(self, layers: Sequence[int] = RESNET50_LAYERS, *, in_channels: int = 3,
               drop_path_rate: float = 0.0, output_stride: int = 32,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    if output_stride not in LAYER_DILATIONS:
      raise ValueError(f"output_stride must be one of {sorted(LAYER_DILATIONS)}, "
                       f"got {output_stride}")
    self.conv1 = conv2d(in_channels, STEM_CHANNELS, 7, 2, kernel_init=_conv_init,
                        dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(STEM_CHANNELS, dtype=dtype, rngs=rngs)

    dilations = (1, 1) + LAYER_DILATIONS[output_stride]
    total_blocks = sum(layers)
    block_idx = 0
    chs = STEM_CHANNELS
    reduction = 4  # conv1 + max pool
    out_channels, reductions = [STEM_CHANNELS], [2]
    for i, (num_blocks, dilation) in enumerate(zip(layers, dilations)):
      width = STEM_CHANNELS * 2**i
      stride = 1 if i == 0 or dilation > 1 else 2
      reduction *= stride
      blocks = []
      for j in range(num_blocks):
        rate = drop_path_rate * block_idx / max(total_blocks - 1, 1)
        blocks.append(Bottleneck(chs, width, stride if j == 0 else 1, dilation,
                                 drop_path_rate=rate, dtype=dtype, rngs=rngs))
        chs = width * BOTTLENECK_EXPANSION
        block_idx += 1
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
      out_channels.append(chs)
      reductions.append(reduction)
    self.num_layers = len(layers)
    self.out_channels: tuple[int, ...] = tuple(out_channels)
    self.reductions: tuple[int, ...] = tuple(reductions)
    self.output_stride = output_stride

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """x: [B, H, W, in_channels] -> [B, H/r, W/r, c] for (r, c) in
    zip(reductions, out_channels) (H, W divisible by max(reductions))."""
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    features = [x]
    x = max_pool_3x3_s2(x)
    for i in range(self.num_layers):
      for block in getattr(self, f"layer{i + 1}"):
        x = block(x)
      features.append(x)
    return features


def resnet50(**kwargs) -> ResNet:
  """torchvision/smp ResNet-50 encoder (kwargs as `ResNet`)."""
  return ResNet(RESNET50_LAYERS, **kwargs)
