"""Test helpers: copy PyTorch reference weights into the Flax models.

A state-dict name ``a.b.3.weight`` is split into a module path and a leaf; a
``rename`` function maps the module path to ours (numeric parts become list indices),
and the leaf maps as ``weight -> kernel`` (conv, OIHW -> HWIO) or ``scale`` (BN),
``bias -> bias``, ``running_mean/var -> mean/var``. `load_state_dict` checks shapes and
that every Param / BatchStat of the target was written. (A full checkpoint converter
lives outside the tests; this is the minimum the parity tests need.)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
from flax import nnx

Rename = Callable[[list[str]], Sequence[str]]
_LEAVES = {'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}


def load_state_dict(module: nnx.Module, state_dict, rename: Rename) -> None:
  """Writes ``state_dict`` (torch tensors) into ``module``'s variables in place."""
  flat = dict(nnx.to_flat_state(nnx.state(module)))
  written = set()
  for name, tensor in state_dict.items():
    if name.endswith('num_batches_tracked'):
      continue
    value = tensor.detach().cpu().numpy()
    *path, leaf = name.split('.')
    if leaf == 'weight':
      leaf = 'kernel' if value.ndim == 4 else 'scale'
      if value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    else:
      leaf = _LEAVES[leaf]
    key = tuple(int(p) if p.isdigit() else p for p in rename(path)) + (leaf,)
    assert key in flat, f'{name} -> {key}: no such variable'
    assert flat[key][...].shape == value.shape, (name, flat[key][...].shape, value.shape)
    flat[key].set_value(jnp.asarray(value))
    written.add(key)
  missing = [k for k, v in flat.items()
             if isinstance(v, (nnx.Param, nnx.BatchStat)) and k not in written]
  assert not missing, f'not in the state dict: {missing[:5]}'


def randomize_batch_norm(torch, module) -> None:
  """Non-trivial BN affine parameters and running statistics (so eval mode, which uses
  them, is really tested); draws from torch's global RNG."""
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)


def _conv_bn(index: str) -> str:
  return ('conv', 'bn')[int(index)]


def smp_rename(task: str) -> Rename:
  """Path map from an smp 0.3.3 model (Unet / DeepLabV3; ``tu-`` timm or torchvision
  ResNet encoder) to a 1-task `DenseModel` whose task is ``task``."""

  def rename(path: list[str]) -> list[str]:
    head, *rest = path
    if head == 'encoder':  # smp wraps timm models as encoder.model
      return ['encoder'] + (rest[1:] if rest[0] == 'model' else rest)
    if head == 'segmentation_head':  # Sequential(conv, upsampling, activation)
      return ['heads', task, 'conv']
    assert head == 'decoder', path
    out = ['decoders', task]
    if rest[0] == 'blocks':  # UNet: Conv2dReLU = Sequential(conv, bn, relu)
      return out + rest[:-1] + [_conv_bn(rest[-1])]
    # DeepLabV3Decoder = Sequential(ASPP, conv, bn, relu).
    if rest[0] != '0':
      return out + [('conv', 'bn')[int(rest[0]) - 1]]
    if rest[1] == 'project':
      return out + ['aspp', 'project', _conv_bn(rest[2])]
    branch, index = rest[2], int(rest[3])
    if branch == '4':  # ASPPPooling = Sequential(pool, conv, bn, relu)
      index -= 1
    return out + ['aspp', 'convs', branch, ('conv', 'bn')[index]]

  return rename
