"""XLA compiler options per backend and kind of program, chosen in one place.

Forward-only programs (the eval and predict steps, the evaluation passes) on the CPU
backend compile with YNNPACK library fusions for convolutions and dots only, not for
reductions and elementwise ops: the EfficientNet-b4 UNet's eval step then takes 0.80x
the time at 2x256x256 and 0.80x at 8x64x64 (2026-12-05, idle, docs/benchmarks.md
"Train and eval step, 2026-12-05"). Train steps keep XLA's defaults: without the YNNPACK
reductions their gradients are slower (1.37-1.45x the time). GPUs and TPUs keep theirs.
`SMD_CPU_FORWARD_OPTIONS=0` compiles forward programs with the defaults too.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from smd_jax import env_flags

FORWARD, TRAIN = "forward", "train"

_YNN_CONVOLUTIONS_AND_DOTS = ",".join(
    f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("INDIVIDUAL_CONVOLUTION", "INDIVIDUAL_DOT"))

# (backend, program) -> XLA debug options; absent: XLA's defaults.
_OPTIONS = {
    ("cpu", FORWARD): {"xla_cpu_experimental_ynn_fusion_type": _YNN_CONVOLUTIONS_AND_DOTS},
}


def compiler_options(backend: str, program: str) -> dict[str, str] | None:
  """The options for `jax.jit(..., compiler_options=)` of a `program` (FORWARD or
  TRAIN) on `backend` ('cpu', 'gpu', 'tpu'), or None for XLA's defaults."""
  if program not in (FORWARD, TRAIN):
    raise ValueError(f"Unknown program kind {program!r}; known: {FORWARD!r}, {TRAIN!r}.")
  if program == FORWARD and not env_flags.on_off("SMD_CPU_FORWARD_OPTIONS", True):
    return None
  options = _OPTIONS.get((backend, program))
  return dict(options) if options else None


def jit(fun, mesh: Mesh, program: str, **kwargs):
  """`jax.jit(fun, **kwargs)` with the `compiler_options` of `program` on `mesh`'s
  backend."""
  backend = mesh.devices.flat[0].platform
  return jax.jit(fun, compiler_options=compiler_options(backend, program), **kwargs)
