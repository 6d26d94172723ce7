"""XLA compiler options per backend and kind of program, chosen in one place.

Forward-only programs (the eval and predict steps, the evaluation passes) on the CPU
backend compile with YNNPACK library fusions for convolutions and dots only, not for
reductions and elementwise ops: the EfficientNet-b4 UNet's eval step then takes 0.80x
the time at 2x256x256 and 0.80x at 8x64x64 (2026-12-05, idle, docs/benchmarks.md
"Train and eval step, 2026-12-05"). Train steps keep XLA's defaults: without the YNNPACK
reductions their gradients are slower (1.37-1.45x the time). GPUs and TPUs keep theirs.
`SMD_CPU_FORWARD_OPTIONS=0` compiles forward programs with the defaults too.

On x86-64 CPUs the forward programs' dots (XLA rewrites 1x1 convolutions as dots) go
to oneDNN instead of YNNPACK; the kxk convolutions stay with YNNPACK, which oneDNN's
fusions do not take. The b4 UNet's eval step took 0.92x the time at 2x256x256 (31
interleaved rounds) and 0.97x at 8x64x64, the train step no different (2026-12-07,
2-core AMD EPYC Zen 4; docs/benchmarks.md). Per dot, oneDNN wins on the tall, thin
ones (32768x24 @ 24x144: 3.1 against 4.0 ms). Not while JAX's persistent compilation
cache is on (`jax_compilation_cache_dir`): XLA cannot serialise a oneDNN fusion (JAX
warns "ToProto is not implemented for thunk kind: onednn-fusion" and stores nothing),
so there the dots stay with YNNPACK and the programs stay cacheable.
`SMD_CPU_ONEDNN_DOTS=0` keeps them with YNNPACK everywhere.

On CPUs with AVX-512, every program also asks LLVM for 512-bit vectors in XLA's own
loops (XLA prefers 256 bits, for CPUs that slow their clock on 512-bit work): the
depthwise taps and elementwise fusions run there, and the b4 UNet's eval step took
0.96x the time at 2x256x256 and 0.92x at 8x64x64, the train step level (2026-12-06,
2-core AMD EPYC Zen 4, interleaved A/B; docs/benchmarks.md). `SMD_CPU_WIDE_VECTORS=0`
keeps XLA's width.
"""

from __future__ import annotations

import functools
import platform
import re

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


_WIDE_VECTORS = {"xla_cpu_prefer_vector_width": "512"}  # on AVX-512 CPUs, every program

# On x86-64, forward programs: YNNPACK keeps the convolutions, oneDNN takes the dots.
_ONEDNN_DOTS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def cpu_is_x86(machine: str | None = None) -> bool:
  """Whether this (or `machine`'s) CPU is x86-64, where XLA:CPU is built with oneDNN."""
  return (machine or platform.machine()).lower() in ("x86_64", "amd64")


def persistent_cache_on() -> bool:
  """Whether JAX stores compiled programs in a persistent cache (a cache folder set)."""
  return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)


@functools.lru_cache(maxsize=None)
def cpu_has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this machine's CPU has AVX-512 (its `flags` list avx512f; False where
  there is no /proc/cpuinfo to read)."""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError:
    return False
  return re.search(r"^flags\s*:.*\bavx512f\b", text, re.MULTILINE) is not None


def compiler_options(backend: str, program: str) -> dict[str, str | bool] | None:
  """The options for `jax.jit(..., compiler_options=)` of a `program` (FORWARD or
  TRAIN) on `backend` ('cpu', 'gpu', 'tpu'), or None for XLA's defaults."""
  if program not in (FORWARD, TRAIN):
    raise ValueError(f"Unknown program kind {program!r}; known: {FORWARD!r}, {TRAIN!r}.")
  options = {}
  forward_options = program == FORWARD and env_flags.on_off("SMD_CPU_FORWARD_OPTIONS", True)
  if program == TRAIN or forward_options:
    options.update(_OPTIONS.get((backend, program), {}))
  if (backend == "cpu" and forward_options and env_flags.on_off("SMD_CPU_ONEDNN_DOTS", True)
      and cpu_is_x86() and not persistent_cache_on()):
    options.update(_ONEDNN_DOTS)
  if (backend == "cpu" and env_flags.on_off("SMD_CPU_WIDE_VECTORS", True)
      and cpu_has_avx512()):
    options.update(_WIDE_VECTORS)
  return options or None


def jit(fun, mesh: Mesh, program: str, **kwargs):
  """`jax.jit(fun, **kwargs)` with the `compiler_options` of `program` on `mesh`'s
  backend."""
  backend = mesh.devices.flat[0].platform
  return jax.jit(fun, compiler_options=compiler_options(backend, program), **kwargs)
