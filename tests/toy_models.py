"""A toy encoder for tests whose subject is not the encoder (it compiles in seconds)."""

import jax
import numpy as np
from flax import nnx

from smd_jax.models import layers


class ToyEncoder(nnx.Module):
  """Five conv3x3-BN-ReLU stages (8 channels); the encoder interface of the registry."""

  def __init__(self, *, in_channels, output_stride=32, drop_path_rate=0.0, dtype=None, rngs):
    del drop_path_rate
    strides = (2, 2, 2, 2, 2) if output_stride == 32 else (2, 2, 2, 1, 1)
    self.convs = nnx.List([layers.conv2d(c, 8, 3, s, dtype=dtype, rngs=rngs)
                           for c, s in zip((in_channels, 8, 8, 8, 8), strides)])
    self.norms = nnx.List([layers.batch_norm(8, dtype=dtype, rngs=rngs) for _ in strides])
    self.out_channels = (8,) * 5
    self.reductions = tuple(int(r) for r in np.cumprod(strides))

  def __call__(self, x):
    features = []
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.relu(norm(conv(x)))
      features.append(x)
    return features
