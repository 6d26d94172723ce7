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

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object unregisters the schemas


def _define_torchvision_schemas(torch) -> None:
  global _library
  if _library is not None:
    return
  try:
    torch.ops.torchvision.nms  # pylint: disable=pointless-statement
    return  # the compiled operators loaded
  except (AttributeError, RuntimeError):
    pass
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
