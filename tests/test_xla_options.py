"""XLA compiler options per backend and program (smd_jax/training/xla_options.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smd_jax.errors import UserError
from smd_jax.training import data_parallel, steps as steps_lib, xla_options
from tests import toy_config

YNN_TYPES = "xla_cpu_experimental_ynn_fusion_type"
WIDTH = "xla_cpu_prefer_vector_width"


def ynn_fusion_kinds(compiled_text: str) -> list[str]:
  """What each YNNPACK library fusion of a compiled program computes: 'reduce',
  'convolution', 'dot' or 'other' (from its fused computation's instructions)."""
  kinds = []
  for callee in re.findall(r"kind=kCustom, calls=%([\w.\-]+),.*__ynn_fusion", compiled_text):
    body = compiled_text[compiled_text.index(f"%{callee} "):].split("\n}\n")[0]
    kinds.append(next((k for k in ("reduce", "convolution", "dot") if f" {k}(" in body),
                      "other"))
  return kinds


def test_options_per_backend_and_program(monkeypatch):
  monkeypatch.delenv("SMD_CPU_FORWARD_OPTIONS", raising=False)
  monkeypatch.setattr(xla_options, "cpu_has_avx512", lambda: False)
  forward = xla_options.compiler_options("cpu", xla_options.FORWARD)
  assert set(forward[YNN_TYPES].split(",")) == {
      "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert xla_options.compiler_options("cpu", xla_options.TRAIN) is None
  for platform in ("gpu", "tpu"):
    for program in (xla_options.FORWARD, xla_options.TRAIN):
      assert xla_options.compiler_options(platform, program) is None
  with pytest.raises(ValueError, match="'backward'"):
    xla_options.compiler_options("cpu", "backward")
  monkeypatch.setenv("SMD_CPU_FORWARD_OPTIONS", "0")
  assert xla_options.compiler_options("cpu", xla_options.FORWARD) is None
  monkeypatch.setenv("SMD_CPU_FORWARD_OPTIONS", "off")
  with pytest.raises(UserError, match="SMD_CPU_FORWARD_OPTIONS"):
    xla_options.compiler_options("cpu", xla_options.FORWARD)


def test_wide_vectors_on_avx512_cpus_only(monkeypatch):
  monkeypatch.delenv("SMD_CPU_FORWARD_OPTIONS", raising=False)
  monkeypatch.delenv("SMD_CPU_WIDE_VECTORS", raising=False)
  monkeypatch.setattr(xla_options, "cpu_has_avx512", lambda: True)
  for program in (xla_options.FORWARD, xla_options.TRAIN):
    assert xla_options.compiler_options("cpu", program)[WIDTH] == "512"
    assert xla_options.compiler_options("gpu", program) is None
  # The forward programs' own options go with their switch; the width stays.
  monkeypatch.setenv("SMD_CPU_FORWARD_OPTIONS", "0")
  assert xla_options.compiler_options("cpu", xla_options.FORWARD) == {WIDTH: "512"}
  monkeypatch.setenv("SMD_CPU_WIDE_VECTORS", "0")
  assert xla_options.compiler_options("cpu", xla_options.TRAIN) is None
  monkeypatch.setattr(xla_options, "cpu_has_avx512", lambda: False)
  monkeypatch.setenv("SMD_CPU_WIDE_VECTORS", "1")
  assert xla_options.compiler_options("cpu", xla_options.TRAIN) is None


@pytest.mark.parametrize("flags, want", [
    ("fpu sse2 avx2 fma avx512f avx512dq avx512bw", True),
    ("fpu sse2 avx2 fma", False),
    ("fpu avx512_bf16 avx512vnni", False),  # other AVX-512 words without the foundation
])
def test_cpu_has_avx512_reads_the_flags_line(tmp_path, flags, want):
  cpuinfo = tmp_path / "cpuinfo"
  # The model name mentions avx512f too: only the flags line counts.
  cpuinfo.write_text(f"processor\t: 0\nmodel name\t: not avx512f\nflags\t\t: {flags}\n")
  assert xla_options.cpu_has_avx512(str(cpuinfo)) is want
  assert xla_options.cpu_has_avx512(str(tmp_path / "missing")) is False


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_xla_takes_the_wide_vector_option():
  # A misspelt option name or value is an error at compile time: compile with it.
  jitted = jax.jit(lambda x: jnp.tanh(x) * 2, compiler_options=dict(xla_options._WIDE_VECTORS))
  np.testing.assert_allclose(jitted(jnp.arange(40.0) / 40), np.tanh(np.arange(40.0) / 40) * 2,
                             rtol=1e-6)


def _conv_then_reductions(x, w):
  y = jax.nn.silu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return jnp.mean(y, axis=(0, 1, 2)), jnp.sum(y * y)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_forward_programs_compile_without_ynnpack_reductions(monkeypatch):
  monkeypatch.delenv("SMD_CPU_FORWARD_OPTIONS", raising=False)
  mesh = data_parallel.make_mesh()
  x, w = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 16))

  def kinds(program):
    jitted = xla_options.jit(_conv_then_reductions, mesh, program)
    return ynn_fusion_kinds(jitted.lower(x, w).compile().as_text())

  assert "reduce" not in kinds(xla_options.FORWARD)
  if "reduce" not in kinds(xla_options.TRAIN):
    pytest.skip("this XLA makes no YNNPACK reductions by default: nothing to tell apart")
  # The model's own steps, too: EfficientNet-b2 (its squeeze-and-excitation means are
  # reductions in the forward pass), 32 px.
  config = toy_config.get_config()
  config.model.encoder = "efficientnet_b2"
  built, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0), 10, mesh)
  batch = data_parallel.to_global(
      {"image": np.zeros((8, 32, 32, 3), np.uint8), "depth": np.ones((8, 32, 32), np.float32),
       "semantic": np.ones((8, 32, 32), np.int16)}, mesh)
  eval_kinds = ynn_fusion_kinds(built.eval_step.lower(state, batch).compile().as_text())
  assert "convolution" in eval_kinds and "reduce" not in eval_kinds, eval_kinds
