"""EfficientNet feature encoder in timm's layout (NHWC, Flax NNX).

Mirrors timm 0.9.2 ``efficientnet_b{0..7}`` (the PyTorch-native variants, *not* the
``tf_`` ports) as built with ``features_only=True`` — the encoder that
segmentation-models-pytorch uses for ``tu-efficientnet_b4``:

* symmetric PyTorch padding (k//2 each side, also for stride 2), not TF 'SAME';
* BatchNorm eps 1e-5 / PyTorch momentum 0.1; SiLU everywhere; SE gate sigmoid;
* no ``conv_head`` / ``bn2`` / classifier (features_only drops them);
* ``output_stride`` 8 or 16 (timm ``output_stride``, what smp's ``tu-`` encoders get
  from DeepLabV3): see `EfficientNet`;
* attribute names equal timm's state-dict names (``conv_stem``, ``bn1``,
  ``blocks[i][j].conv_dw`` ...), so a timm checkpoint maps over by renaming
  ``weight -> kernel`` / ``scale`` (BN), ``running_mean/var -> mean/var`` and
  transposing conv kernels OIHW -> HWIO.

The architecture is data: ``EFFICIENTNET_STAGES`` is the B0 stage table and every
variant scales it by a (width, depth) multiplier pair from ``EFFICIENTNET_PARAMS``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
from flax import nnx

from smd_jax.models import conv_formulations
from smd_jax.models.layers import (Dtype, batch_norm, conv2d, drop_path, uniform_init,
                                   variance_scaling)


class StageDef(NamedTuple):
  """One row of the stage table (timm arch string ``{block}_r{repeats}_k_s_e_c``)."""

  block: str  # 'ds': depthwise-separable, 'ir': inverted residual (MBConv)
  repeats: int
  kernel: int
  stride: int  # stride of the first block of the stage; the others use 1
  expansion: int
  channels: int


# EfficientNet-B0 (timm ``_gen_efficientnet`` arch_def), all blocks with SE ratio 0.25.
EFFICIENTNET_STAGES: tuple[StageDef, ...] = (
    StageDef("ds", 1, 3, 1, 1, 16),
    StageDef("ir", 2, 3, 2, 6, 24),
    StageDef("ir", 2, 5, 2, 6, 40),
    StageDef("ir", 3, 3, 2, 6, 80),
    StageDef("ir", 3, 5, 1, 6, 112),
    StageDef("ir", 4, 5, 2, 6, 192),
    StageDef("ir", 1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
SE_RATIO = 0.25

# name -> (width multiplier, depth multiplier); timm efficientnet.py / EfficientNet paper.
EFFICIENTNET_PARAMS: dict[str, tuple[float, float]] = {
    "efficientnet_b0": (1.0, 1.0),
    "efficientnet_b1": (1.0, 1.1),
    "efficientnet_b2": (1.1, 1.2),
    "efficientnet_b3": (1.2, 1.4),
    "efficientnet_b4": (1.4, 1.8),
    "efficientnet_b5": (1.6, 2.2),
    "efficientnet_b6": (1.8, 2.6),
    "efficientnet_b7": (2.0, 3.1),
}


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """timm ``make_divisible``: nearest multiple of ``divisor``, never < 90% of ``value``."""
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < round_limit * value:
    new_value += divisor
  return new_value


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
  """timm ``round_channels``: scale a channel count by the width multiplier."""
  if not multiplier:
    return channels
  return make_divisible(channels * multiplier, divisor)


def scale_depth(repeats: int, multiplier: float) -> int:
  """timm ``_scale_stage_depth`` with depth_trunc='ceil' (also for the first stage)."""
  return int(math.ceil(repeats * multiplier))


def _conv_init(groups: int = 1) -> nnx.Initializer:
  # timm ``_init_weight_goog``: N(0, sqrt(2 / fan_out)), fan_out = k*k*out / groups.
  # variance_scaling's fan_out is k*k*out; multiplying the scale by groups divides it.
  return variance_scaling(2.0 * groups, "fan_out", "normal")


# PyTorch's default Conv2d init (kaiming_uniform_(a=sqrt(5)): U(+-sqrt(1 / fan_in)),
# fan_in = k*k*in/groups); what a torchvision MBConv built outside a model gets.
_torch_default_init = variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _inits(init: str, groups: int = 1) -> nnx.Initializer:
  if init == "timm":
    return _conv_init(groups)
  if init == "torch":
    return _torch_default_init
  raise ValueError(f"init must be 'timm' or 'torch', got {init!r}")


class SqueezeExcite(nnx.Module):
  """SE: global mean over H, W -> 1x1 reduce -> SiLU -> 1x1 expand -> sigmoid gate.

  timm ``SqueezeExcite`` and torchvision ``SqueezeExcitation(activation=SiLU)``
  compute the same; ``init`` 'timm' (goog init, zero biases) or 'torch' (PyTorch
  defaults: biases U(+-1/sqrt(fan_in))).
  """

  def __init__(self, channels: int, reduced_channels: int, *, init: str = "timm",
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    reduce_bias = expand_bias = None
    if init == "torch":
      reduce_bias = uniform_init(1.0 / math.sqrt(channels))
      expand_bias = uniform_init(1.0 / math.sqrt(reduced_channels))
    self.conv_reduce = conv2d(channels, reduced_channels, 1, use_bias=True,
                              kernel_init=_inits(init), bias_init=reduce_bias,
                              dtype=dtype, rngs=rngs)
    self.conv_expand = conv2d(reduced_channels, channels, 1, use_bias=True,
                              kernel_init=_inits(init), bias_init=expand_bias,
                              dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = conv_formulations.spatial_mean(x)  # [B, 1, 1, C]; f32 accumulation
    s = self.conv_expand(jax.nn.silu(self.conv_reduce(s)))
    return x * jax.nn.sigmoid(s)


def _residual(block: nnx.Module, x: jax.Array, shortcut: jax.Array) -> jax.Array:
  """Both block types end alike: optional drop path, then the identity shortcut
  when the block has one (``block.has_skip``)."""
  if not block.has_skip:
    return x
  if block.drop_path is not None:
    x = block.drop_path(x)
  return x + shortcut


class DepthwiseSeparableConv(nnx.Module):
  """timm ``DepthwiseSeparableConv``: dw kxk -> BN -> SiLU -> SE -> pw 1x1 -> BN."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, *,
               dilation: int = 1, se_ratio: float = SE_RATIO, drop_path_rate: float = 0.0,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    self.has_skip = stride == 1 and in_channels == out_channels
    self.conv_dw = conv2d(in_channels, in_channels, kernel, stride, groups=in_channels,
                          dilation=dilation, kernel_init=_conv_init(in_channels),
                          dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(in_channels, dtype=dtype, rngs=rngs)
    self.se = SqueezeExcite(in_channels, round(in_channels * se_ratio), dtype=dtype,
                            rngs=rngs)
    self.conv_pw = conv2d(in_channels, out_channels, 1, kernel_init=_conv_init(),
                          dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(out_channels, dtype=dtype, rngs=rngs)
    self.drop_path = drop_path(drop_path_rate, rngs) if self.has_skip else None

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    x = jax.nn.silu(self.bn1(self.conv_dw(x)))
    x = self.se(x)
    x = self.bn2(self.conv_pw(x))
    return _residual(self, x, shortcut)


class InvertedResidual(nnx.Module):
  """timm ``InvertedResidual`` (MBConv): pw expand -> BN-SiLU -> dw kxk -> BN-SiLU
  -> SE -> pw project -> BN, plus identity shortcut when stride 1 and in == out.

  Also torchvision's ``MBConv`` (same computation; SE reduced to in_channels // 4,
  stochastic depth 'row' = drop path); ``init='torch'`` gives PyTorch's default init
  that such a standalone torchvision block has, 'timm' (default) timm's goog init.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
               expansion: float, *, dilation: int = 1, se_ratio: float = SE_RATIO,
               drop_path_rate: float = 0.0, init: str = "timm",
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    mid = make_divisible(in_channels * expansion)
    self.has_skip = stride == 1 and in_channels == out_channels
    self.conv_pw = conv2d(in_channels, mid, 1, kernel_init=_inits(init), dtype=dtype,
                          rngs=rngs)
    self.bn1 = batch_norm(mid, dtype=dtype, rngs=rngs)
    self.conv_dw = conv2d(mid, mid, kernel, stride, groups=mid, dilation=dilation,
                          kernel_init=_inits(init, mid), dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(mid, dtype=dtype, rngs=rngs)
    # timm builds SE on the expanded width with ratio se_ratio / expansion
    # (``se_from_exp=False``), i.e. 0.25 of the *block input* channels.
    self.se = SqueezeExcite(mid, round(mid * se_ratio / expansion), init=init,
                            dtype=dtype, rngs=rngs)
    self.conv_pwl = conv2d(mid, out_channels, 1, kernel_init=_inits(init), dtype=dtype,
                           rngs=rngs)
    self.bn3 = batch_norm(out_channels, dtype=dtype, rngs=rngs)
    self.drop_path = drop_path(drop_path_rate, rngs) if self.has_skip else None

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    x = jax.nn.silu(self.bn1(self.conv_pw(x)))
    x = jax.nn.silu(self.bn2(self.conv_dw(x)))
    x = self.se(x)
    x = self.bn3(self.conv_pwl(x))
    return _residual(self, x, shortcut)


class EfficientNet(nnx.Module):
  """EfficientNet feature extractor: ``x [B, H, W, C_in] -> 5 maps at strides 2..32``
  (2, 4, 8, 8, 8 with ``output_stride=8``).

  Args:
    width_multiplier, depth_multiplier: compound-scaling coefficients (see
      ``EFFICIENTNET_PARAMS``).
    in_channels: input channels (3 for RGB, 3 + k with semantic inputs).
    stages: the B0 stage table to scale.
    drop_path_rate: stochastic-depth rate of the last block, linearly increasing
      from 0 over blocks as in timm. 0 (timm/smp default) adds no RNG state; > 0 draws
      from the 'dropout' stream of ``rngs`` in train mode.
    output_stride: 32 (default), 16 or 8. As timm 0.9.2's ``EfficientNetBuilder``
      with ``output_stride``: a block whose stride would take the running stride past
      it gets stride 1 instead, keeps the current dilation itself, and multiplies
      the dilation of all later blocks by its stride (only depthwise convs are
      dilated; padding ``dilation * (k - 1) // 2``). Same parameters, features at
      strides (2, 4, 8, 8, 8) for 8.
    dtype: compute dtype (None/float32, or bfloat16 for mixed precision); params f32.

  Attributes:
    out_channels: channels of the 5 returned feature maps, e.g. (24, 32, 56, 160, 448)
      for B4.
    reductions: their strides w.r.t. the input, (2, 4, 8, 16, 32) by default.
  """

  def __init__(self, width_multiplier: float, depth_multiplier: float, *,
               in_channels: int = 3, stages: Sequence[StageDef] = EFFICIENTNET_STAGES,
               stem_channels: int = STEM_CHANNELS, se_ratio: float = SE_RATIO,
               drop_path_rate: float = 0.0, output_stride: int = 32,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    if output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    stem = round_channels(stem_channels, width_multiplier)
    self.conv_stem = conv2d(in_channels, stem, 3, 2, kernel_init=_conv_init(),
                            dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(stem, dtype=dtype, rngs=rngs)

    repeats = [scale_depth(s.repeats, depth_multiplier) for s in stages]
    total_blocks = sum(repeats)
    block_idx = 0
    chs = stem
    reduction, dilation = 2, 1  # after the stem
    blocks, out_channels, reductions, feature_stages = [], [], [], []
    for i, (stage, n) in enumerate(zip(stages, repeats)):
      out = round_channels(stage.channels, width_multiplier)
      stage_blocks = []
      for j in range(n):
        stride = stage.stride if j == 0 else 1
        block_dilation = dilation
        if stride > 1:
          if reduction * stride > output_stride:  # timm: stride -> dilation
            dilation *= stride
            stride = 1
          else:
            reduction *= stride
        kw = dict(se_ratio=se_ratio, dilation=block_dilation, dtype=dtype, rngs=rngs,
                  drop_path_rate=drop_path_rate * block_idx / total_blocks)
        if stage.block == "ds":
          block = DepthwiseSeparableConv(chs, out, stage.kernel, stride, **kw)
        elif stage.block == "ir":
          block = InvertedResidual(chs, out, stage.kernel, stride, stage.expansion, **kw)
        else:
          raise ValueError(f"Unknown block type {stage.block!r}")
        stage_blocks.append(block)
        chs = out
        block_idx += 1
      blocks.append(nnx.List(stage_blocks))
      # timm feature_info ('bottleneck' location): a stage's output is a feature when
      # the next stage downsamples, and the last stage's output always is.
      if i == len(stages) - 1 or stages[i + 1].stride > 1:
        feature_stages.append(i)
        out_channels.append(out)
        reductions.append(reduction)
    self.blocks = nnx.List(blocks)
    self.feature_stages: tuple[int, ...] = tuple(feature_stages)
    self.out_channels: tuple[int, ...] = tuple(out_channels)
    self.reductions: tuple[int, ...] = tuple(reductions)
    self.output_stride = output_stride

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """x: [B, H, W, in_channels] -> [B, H/r, W/r, c] for (r, c) in
    zip(reductions, out_channels) (H, W divisible by max(reductions) for exact
    sizes)."""
    x = jax.nn.silu(self.bn1(self.conv_stem(x)))
    features = []
    for i, stage in enumerate(self.blocks):
      for block in stage:
        x = block(x)
      if i in self.feature_stages:
        features.append(x)
    return features


def efficientnet(name: str, **kwargs) -> EfficientNet:
  """Build ``efficientnet_b0`` .. ``efficientnet_b7`` by name (kwargs as EfficientNet)."""
  if name not in EFFICIENTNET_PARAMS:
    raise ValueError(f"Unknown EfficientNet {name!r}; known: {sorted(EFFICIENTNET_PARAMS)}")
  width, depth = EFFICIENTNET_PARAMS[name]
  return EfficientNet(width, depth, **kwargs)


def efficientnet_b2(**kwargs) -> EfficientNet:
  return efficientnet("efficientnet_b2", **kwargs)


def efficientnet_b3(**kwargs) -> EfficientNet:
  return efficientnet("efficientnet_b3", **kwargs)


def efficientnet_b4(**kwargs) -> EfficientNet:
  return efficientnet("efficientnet_b4", **kwargs)
