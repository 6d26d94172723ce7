"""The optional PyTorch reference stack for tests: `import_reference()` returns
(torch, timm, smp) or skips the test with the reason.

The import itself (and the torchvision operator stand-ins it may need) lives in
`smd_jax.convert.reference`.
"""

import pytest

from smd_jax.convert import reference


def import_reference():
  """(torch, timm, smp), or pytest.skip with the reason they are unavailable."""
  try:
    return reference.import_reference()
  except ImportError as e:
    pytest.skip(str(e))
