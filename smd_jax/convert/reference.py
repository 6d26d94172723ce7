"""Imports the optional PyTorch reference stack: torch, timm 0.9.2, smp 0.3.3.

Install (CPU; ``tools/install_torch_reference.sh`` does exactly this)::

    pip install torch==2.13.0
    pip install --no-deps timm==0.9.2 segmentation-models-pytorch==0.3.3 \\
        torchvision==0.28.0 efficientnet-pytorch==0.7.1 pretrainedmodels==0.7.4
    pip install pyyaml huggingface_hub safetensors six munch

(``--no-deps``: timm 0.9.2 and smp 0.3.3 pin torchvision / each other in ways pip
cannot resolve next to the CPU torch.)

PyPI's torchvision may fail to load its compiled operators next to that torch
("operator torchvision::nms does not exist"). timm and smp only need torchvision's
Python side, whose import registers fake (meta) kernels for ``nms`` / ``qnms``; when
the compiled operators are missing, `import_reference` first defines those two
operator schemas (no kernels), which is enough for the import to succeed. Nothing
here calls them.
"""

from __future__ import annotations

import glob
import importlib.util
import os

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object unregisters the schemas


def _load_torchvision_operators(torch) -> bool:
  """Loads torchvision's compiled operators without importing torchvision; False when
  they do not load next to this torch. Defining the schemas when they do load (PyPI's
  torch and torchvision on Python 3.12+) would abort the process at `import torchvision`
  (the same operator registered twice)."""
  spec = importlib.util.find_spec("torchvision")
  if spec is None or spec.origin is None:
    return False
  for path in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
    try:
      torch.ops.load_library(path)
      return True
    except (OSError, RuntimeError):
      return False
  return False


def _define_torchvision_schemas(torch) -> None:
  global _library
  if _library is not None:
    return
  if _load_torchvision_operators(torch):
    return  # a torchvision built for this torch: its own schemas and kernels
  _library = torch.library.Library("torchvision", "DEF")
  for schema in _TORCHVISION_SCHEMAS:
    _library.define(schema)


def import_reference():
  """(torch, timm, smp); ImportError with the reason when they cannot be imported."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    _define_torchvision_schemas(torch)
    import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
    import timm  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    raise ImportError(
        "PyTorch reference (torch, timm==0.9.2, segmentation-models-pytorch==0.3.3) not "
        f"available: {e!r}; see tools/install_torch_reference.sh") from e
  return torch, timm, smp
