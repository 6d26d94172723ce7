"""Prediction heads: decoder features -> per-pixel task outputs (NHWC, Flax NNX)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from smd_jax.models.layers import (Dtype, conv2d, upsample_bilinear_align_corners,
                                   variance_scaling)

# Output activations by config name. 'sigmoid' maps depth into [0, 1] (the paper's
# normalised depth); 'identity' leaves logits for semantic / contour heads.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


# smp ``initialize_head``: xavier_uniform_ weights, zero bias.
_xavier_uniform = variance_scaling(1.0, "fan_avg", "uniform")


class SegmentationHead(nnx.Module):
  """smp ``SegmentationHead``: conv kxk (with bias) -> [bilinear upsampling] ->
  activation.

  ``[B, H, W, in_channels] -> [B, s*H, s*W, num_outputs]`` float32 with s =
  ``upsampling``: the conv runs in the compute dtype, the upsampling and the activation
  (e.g. sigmoid) in float32 so losses see f32 values. ``upsampling > 1`` is smp's
  ``nn.UpsamplingBilinear2d(scale_factor=upsampling)``, i.e. bilinear with
  align_corners=True (DeepLabV3: kernel 1, upsampling 8; UNet: kernel 3, none).
  smp's ``segmentation_head.0`` is our ``segmentation_head.conv``.
  """

  def __init__(self, in_channels: int, num_outputs: int, activation: str = "identity",
               kernel_size: int = 3, upsampling: int = 1, *, dtype: Dtype | None = None,
               rngs: nnx.Rngs):
    get_activation(activation)  # fail at construction on an unknown name
    if upsampling < 1:
      raise ValueError(f"upsampling must be >= 1, got {upsampling}")
    self.activation = activation
    self.upsampling = int(upsampling)
    self.conv = conv2d(in_channels, num_outputs, kernel_size, use_bias=True,
                       kernel_init=_xavier_uniform, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x).astype(jnp.float32)
    if self.upsampling > 1:
      x = upsample_bilinear_align_corners(x, self.upsampling)
    return get_activation(self.activation)(x)
