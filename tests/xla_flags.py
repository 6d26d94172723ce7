"""XLA flags for the test processes and the training subprocesses they start.

Simulated devices, plus `--xla_backend_optimization_level=0`: the tests compile far
more than they run (small inputs, dozens of distinct programs), and skipping LLVM's
optimisation passes cut a tiny EfficientNet UNet train step's compile from 38 s to
21 s and the paper-config tests from 155 s to 116 s on 2 cores (docs/benchmarks.md
"Test suite"). Results stay within every test's tolerance; only run time suffers,
which small tests do not notice. `SMD_TEST_XLA_FAST=0` compiles as users do.
"""

from __future__ import annotations

from smd_jax.env_flags import on_off

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int, inherited: str = "") -> str:
  """`inherited` flags, `devices` simulated CPU devices, and the fast compile when on."""
  flags = [inherited.strip(), f"--xla_force_host_platform_device_count={devices}"]
  if on_off("SMD_TEST_XLA_FAST", default=True) and FAST_COMPILE not in inherited:
    flags.append(FAST_COMPILE)
  return " ".join(f for f in flags if f)
