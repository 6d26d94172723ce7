"""Test setup: simulate an 8-device pod on the CPU (must happen before jax is imported).

The header says whether a missing PyTorch reference fails or skips its tests
(`SMD_REQUIRE_TORCH_REFERENCE`, tests/torch_reference.py).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import jax  # noqa: E402

# Tests that run the same program twice (e.g. train, then resume in a new loop)
# reuse compiled executables instead of compiling again.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="smd_jax_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_report_header(config):
  del config
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  mode = ("required: a missing reference fails its tests"
          if torch_reference.reference_required()
          else "optional: its tests skip without it")
  return f"PyTorch reference {mode} ({torch_reference.REQUIRE_ENV})"
