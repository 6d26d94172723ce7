"""Test setup: simulate an 8-device pod on the CPU (must happen before jax is imported).

The header says whether a missing PyTorch reference fails or skips its tests
(`SMD_REQUIRE_TORCH_REFERENCE`, tests/torch_reference.py).

Parallel runs: with pytest-xdist installed (the `test` extra), `python -m pytest` runs
the tests in WORKERS processes (XLA compiles on one thread, so two workers nearly halve
the wall time on 2 cores). `-n N` picks another number, `-n 0` or `-p no:xdist` runs
in this process. Each test file runs in one worker (`--dist loadfile`): module-scoped
fixtures are built once, and a file's tests share their compiled programs. The files
are handed out slowest first (`SLOW_FILES`), so that short files fill the end and both
workers finish together (xdist's own order, most tests first, left a file of two 40 s
tests for last).
"""

from __future__ import annotations

import os

from smd_jax import huge_pages  # imports no jax
from tests.xla_flags import xla_flags  # imports no jax

os.environ["XLA_FLAGS"] = xla_flags(8, os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# glibc's allocator tunables for xdist's workers and every process a test starts, as
# the commands give them themselves (smd_jax/huge_pages.py): faster steps, and the
# commands the tests start need not re-execute.
_TUNED = huge_pages.tuned_environment_here(os.environ)
if _TUNED is not None:
  os.environ["GLIBC_TUNABLES"] = _TUNED["GLIBC_TUNABLES"]
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
  # One of several workers: PyTorch's OpenMP threads (one per core by default) would
  # spin against the other workers' XLA threads.
  os.environ.setdefault("OMP_NUM_THREADS", "1")

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import collector  # noqa: E402

# Tests that run the same program twice (e.g. train, then resume in a new loop; the
# eval and predict steps of the same toy model in several tests) reuse compiled
# executables instead of compiling again. Every program, however quick to compile: with
# a floor of 1 s (JAX's default), 3 of test_train/predict/evaluate/no_recompile's 159 compile
# requests hit, with no floor 75, and their compile time fell from 63-68 s to 51-53 s
# (docs/benchmarks.md "Test suite"). One directory per process: JAX writes cache entries
# non-atomically, so parallel workers must not share one.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="smd_jax_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

WORKERS = 2

# Seconds of work per file in one suite run (2026-12-06, 2-core Intel Xeon, Python 3.13;
# `--durations=0` summed per file): the order in which workers are given the files.
# Files not listed come after these, in collection order. A rough order is all it needs.
SLOW_FILES = {
    "test_paper_configs.py": 180, "test_fault_tolerance.py": 100,
    "test_convert_fidelity.py": 90, "test_predict.py": 70, "test_semantic_md_models.py": 68,
    "test_train.py": 60, "test_multihost.py": 50, "test_model_zoo.py": 39,
    "test_evaluate.py": 36, "test_models.py": 34, "test_convert.py": 28,
    "test_accelerator_check.py": 25, "test_multihost_data.py": 24, "test_validation.py": 19,
    "test_depthwise_vjp.py": 17, "test_bad_input.py": 16, "test_hub.py": 14,
}


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
  """Without -n (and with xdist present): WORKERS workers, each test file in one of them."""
  if (getattr(config, "workerinput", None) is not None  # a worker: runs what it is sent
      or not config.pluginmanager.hasplugin("xdist") or config.getoption("usepdb")
      or config.getoption("collectonly")):
    return
  if config.option.numprocesses is None and not config.option.tx:
    config.option.numprocesses = WORKERS
  if config.option.numprocesses and config.option.dist == "no":
    config.option.dist = "loadfile"
    config.option.loadscopereorder = False  # keep the order of the hook below


def pytest_collection_modifyitems(items):
  """Slowest files first (`SLOW_FILES`); each file's tests keep their order."""
  items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))


def pytest_report_header(config):
  del config
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  mode = ("required: a missing reference fails its tests"
          if torch_reference.reference_required()
          else "optional: its tests skip without it")
  return f"PyTorch reference {mode} ({torch_reference.REQUIRE_ENV})"


def pytest_collection_finish(session):
  """Every test module is imported: what the imports made is never garbage (tests/collector.py)."""
  del session
  collector.collect_less()
