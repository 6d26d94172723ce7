"""The optional PyTorch reference stack for tests: `import_reference()` returns
(torch, timm, smp), or skips the test with the reason.

With `SMD_REQUIRE_TORCH_REFERENCE=1` in the environment (CI sets it: `.ci/run`) a
missing or broken reference FAILS the test instead: the model-numerics checks that
need it must not vanish as skips from a green run.

The import itself (and the torchvision operator stand-ins it may need) lives in
`smd_jax.convert.reference`.
"""

from __future__ import annotations

import os

import pytest

from smd_jax.convert import reference

REQUIRE_ENV = "SMD_REQUIRE_TORCH_REFERENCE"


def reference_required() -> bool:
  """True when the environment asks for the reference (any value but "", "0", "false")."""
  return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def import_reference():
  """(torch, timm, smp); without them pytest.skip with the reason, or pytest.fail when
  `SMD_REQUIRE_TORCH_REFERENCE` is set."""
  try:
    return reference.import_reference()
  except ImportError as e:
    if reference_required():
      pytest.fail(f"{REQUIRE_ENV} is set and {e}", pytrace=False)
    pytest.skip(f"{e} (set {REQUIRE_ENV}=1 to fail instead)")


def import_torch():
  """torch alone (tests that need no timm / smp), under the same skip-or-fail rule."""
  return import_reference()[0]
