"""Imports the optional PyTorch reference stack (torch, timm 0.9.2, smp 0.3.3).

PyPI's torchvision fails to load its compiled ops next to the CPU torch build
("operator torchvision::nms does not exist"). smp/timm only need torchvision's
Python side, whose import registers fake kernels for `nms`/`qnms`; defining the
two operator schemas first (no kernels) is enough for that import to succeed.
Tests call `import_reference()` and skip with the reason when it fails.
"""

import pytest

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keep the Library object alive: dropping it unregisters the schemas


def _define_torchvision_schemas(torch):
  global _library
  if _library is not None:
    return
  try:
    torch.ops.torchvision.nms  # pylint: disable=pointless-statement
    return  # the real compiled ops loaded
  except (AttributeError, RuntimeError):
    pass
  _library = torch.library.Library("torchvision", "DEF")
  for schema in _TORCHVISION_SCHEMAS:
    _library.define(schema)


def import_reference():
  """(torch, timm, smp), or pytest.skip with the reason they are unavailable."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    _define_torchvision_schemas(torch)
    import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
    import timm  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"PyTorch reference (torch, timm==0.9.2, segmentation-models-pytorch==0.3.3) "
                f"not available: {e!r}")
  return torch, timm, smp
