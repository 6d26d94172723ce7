"""Test helpers: copy PyTorch reference weights into the Flax models.

Thin wrappers over the package converter (`smd_jax.convert`): a state-dict name
``a.b.3.weight`` is split into a module path and a leaf, a name map (``rename``) maps
the module path to ours, and `smd_jax.convert.core` transforms the layout (conv OIHW
-> HWIO ``kernel``, BN ``weight``/``running_mean``/``running_var`` -> ``scale``/
``mean``/``var``), checks names and shapes and that every Param / BatchStat of the
target is written, then writes.
"""

from __future__ import annotations

from typing import Callable, Sequence

from flax import nnx

from smd_jax.convert import core, names

Rename = Callable[[list[str]], Sequence[str]]


def numpy_state_dict(state_dict) -> dict:
  """torch tensors -> numpy arrays (copied, so nothing aliases torch's buffers)."""
  return {name: t.detach().cpu().numpy().copy() for name, t in state_dict.items()}


def load_state_dict(module: nnx.Module, state_dict, rename: Rename) -> core.AssignReport:
  """Writes ``state_dict`` (torch tensors) into ``module``'s variables in place;
  `core.ConversionError` lists whatever does not fit."""
  return core.load_state_dict(module, numpy_state_dict(state_dict),
                              lambda path: tuple(rename(list(path))))


def randomize_batch_norm(torch, module) -> None:
  """Non-trivial BN affine parameters and running statistics (so eval mode, which uses
  them, is really tested); draws from torch's global RNG. (`smd_jax.convert.fidelity.
  calibrate_batch_norm` instead fits the statistics to data, keeping activations in
  range for deep models.)"""
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)


def smp_rename(task: str) -> Rename:
  """Path map from an smp 0.3.3 model (Unet / DeepLabV3; ``tu-`` timm or torchvision
  ResNet encoder) to a 1-task `DenseModel` whose task is ``task``."""
  return names.smp_model(task)
