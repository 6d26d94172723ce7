"""XLA compiler options per backend and program (smd_jax/training/xla_options.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smd_jax.errors import UserError
from smd_jax.models import registry
from smd_jax.training import data_parallel, steps as steps_lib, xla_options
from tests import toy_config
from tests.test_paper_configs import TINY_ENCODERS

YNN_TYPES = "xla_cpu_experimental_ynn_fusion_type"
ONEDNN_TYPES = "xla_cpu_experimental_onednn_fusion_type"
WIDTH = "xla_cpu_prefer_vector_width"


def library_fusion_kinds(compiled_text: str, library: str = "ynn") -> list[str]:
  """What each library fusion (`library`: 'ynn' for YNNPACK, 'onednn') of a compiled
  program computes: 'reduce', 'convolution', 'dot' or 'other' (from its fused
  computation's instructions)."""
  kinds = []
  for callee in re.findall(rf"kind=kCustom, calls=%([\w.\-]+),.*__{library}_fusion\b",
                           compiled_text):
    body = compiled_text[compiled_text.index(f"%{callee} "):].split("\n}\n")[0]
    kinds.append(next((k for k in ("reduce", "convolution", "dot") if f" {k}(" in body),
                      "other"))
  return kinds


def test_options_per_backend_and_program(monkeypatch):
  monkeypatch.delenv("SMD_CPU_FORWARD_OPTIONS", raising=False)
  monkeypatch.delenv("SMD_CPU_ONEDNN_DOTS", raising=False)
  monkeypatch.setattr(xla_options, "cpu_has_avx512", lambda: False)
  monkeypatch.setattr(xla_options, "cpu_is_x86", lambda: False)
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


def test_onednn_dots_in_forward_programs_on_x86_only(monkeypatch):
  monkeypatch.delenv("SMD_CPU_FORWARD_OPTIONS", raising=False)
  monkeypatch.delenv("SMD_CPU_ONEDNN_DOTS", raising=False)
  monkeypatch.setattr(xla_options, "cpu_has_avx512", lambda: False)
  monkeypatch.setattr(xla_options, "cpu_is_x86", lambda: True)
  monkeypatch.setattr(xla_options, "persistent_cache_on", lambda: False)
  forward = xla_options.compiler_options("cpu", xla_options.FORWARD)
  assert forward == {YNN_TYPES: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
                     "xla_cpu_use_onednn": True,
                     ONEDNN_TYPES: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert xla_options.compiler_options("cpu", xla_options.TRAIN) is None
  assert xla_options.compiler_options("gpu", xla_options.FORWARD) is None
  monkeypatch.setenv("SMD_CPU_ONEDNN_DOTS", "0")  # YNNPACK's dots again
  assert set(xla_options.compiler_options("cpu", xla_options.FORWARD)) == {YNN_TYPES}
  monkeypatch.setenv("SMD_CPU_ONEDNN_DOTS", "1")
  # A persistent compilation cache cannot store oneDNN fusions: YNNPACK's dots there.
  monkeypatch.setattr(xla_options, "persistent_cache_on", lambda: True)
  assert set(xla_options.compiler_options("cpu", xla_options.FORWARD)) == {YNN_TYPES}
  monkeypatch.setattr(xla_options, "persistent_cache_on", lambda: False)
  monkeypatch.setenv("SMD_CPU_FORWARD_OPTIONS", "0")  # the forward programs' options, all
  assert xla_options.compiler_options("cpu", xla_options.FORWARD) is None


def test_persistent_cache_on_reads_jax_config():
  # tests/conftest.py gives every test process a cache folder.
  assert jax.config.jax_compilation_cache_dir and xla_options.persistent_cache_on()
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    assert not xla_options.persistent_cache_on()
  finally:
    jax.config.update("jax_enable_compilation_cache", True)


@pytest.mark.parametrize("machine, want", [("x86_64", True), ("AMD64", True),
                                           ("aarch64", False), ("arm64", False),
                                           ("ppc64le", False)])
def test_cpu_is_x86(machine, want):
  assert xla_options.cpu_is_x86(machine) is want


def _dot_then_conv(x, w1, w3):
  y = jnp.einsum("bhwc,co->bhwo", x, w1)  # a 1x1 convolution: XLA makes it a dot
  return jax.lax.conv_general_dilated(y, w3, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.skipif(jax.default_backend() != "cpu" or not xla_options.cpu_is_x86(),
                    reason="oneDNN fusions: XLA:CPU on x86-64")
# The tests' persistent cache cannot store the oneDNN program; JAX warns and goes on.
@pytest.mark.filterwarnings("ignore:Error writing persistent compilation cache entry")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_programs_run_dots_through_onednn(monkeypatch, dtype):
  """XLA takes the options (a misspelt name or value fails to compile), oneDNN computes
  the dot and YNNPACK the 3x3 convolution, and the result is NumPy's."""
  monkeypatch.delenv("SMD_CPU_FORWARD_OPTIONS", raising=False)
  monkeypatch.setattr(xla_options, "persistent_cache_on", lambda: False)
  mesh = data_parallel.make_mesh()
  rng = np.random.default_rng(0)
  x, w1, w3 = (jnp.asarray(rng.standard_normal(shape), dtype)
               for shape in ((2, 16, 16, 24), (24, 40), (3, 3, 40, 16)))

  def compiled(onednn_dots):
    monkeypatch.setenv("SMD_CPU_ONEDNN_DOTS", onednn_dots)
    return xla_options.jit(_dot_then_conv, mesh, xla_options.FORWARD).lower(x, w1, w3).compile()

  on, off = compiled("1"), compiled("0")
  assert library_fusion_kinds(on.as_text(), "onednn") == ["dot"]
  assert library_fusion_kinds(off.as_text(), "onednn") == []
  # In bfloat16 this XLA's YNNPACK declines the conv once oneDNN has the dot (the b4
  # UNet's bfloat16 eval step took the same time either way, docs/benchmarks.md).
  if dtype == jnp.float32:
    assert library_fusion_kinds(on.as_text()) == ["convolution"]
    assert sorted(library_fusion_kinds(off.as_text())) == ["convolution", "dot"]
  # Float64 reference from the same (rounded) inputs: the 1x1 conv, then the 3x3 conv
  # over zero padding.
  x, w1, w3 = (np.asarray(a, np.float64) for a in (x, w1, w3))
  y = np.einsum("bhwc,co->bhwo", x, w1)
  if dtype == jnp.bfloat16:  # the dot's output is rounded to bfloat16 before the conv
    y = np.asarray(jnp.asarray(y, jnp.bfloat16), np.float64)
  yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = sum(np.einsum("bhwc,co->bhwo", yp[:, a:a + 16, d:d + 16], w3[a, d])
             for a in range(3) for d in range(3))
  # float32 sums of 24 and 360 products: ~1e-5 of the largest value, with margin;
  # bfloat16 (8-bit significand): the intermediate's rounding and the output's, ~2^-8
  # of the largest value each.
  tol = 1e-5 if dtype == jnp.float32 else 2.0**-6
  got = np.asarray(on(jnp.asarray(x, dtype), jnp.asarray(w1, dtype), jnp.asarray(w3, dtype)),
                   np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


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
    return library_fusion_kinds(jitted.lower(x, w).compile().as_text())

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
  eval_kinds = library_fusion_kinds(built.eval_step.lower(state, batch).compile().as_text())
  assert "convolution" in eval_kinds and "reduce" not in eval_kinds, eval_kinds


@pytest.mark.skipif(jax.default_backend() != "cpu" or not xla_options.cpu_is_x86(),
                    reason="oneDNN fusions: XLA:CPU on x86-64")
@pytest.mark.filterwarnings("ignore:Error writing persistent compilation cache entry")
def test_predictions_through_onednn_dots_are_the_models(monkeypatch):
  """A whole model, a tiny EfficientNet UNet at 32 px: the predict step as users compile it
  on x86-64 (oneDNN's dots, YNNPACK's convolutions) against the same model under plain
  `jax.jit` (XLA's defaults: the compile that test_convert_fidelity.py checks against
  PyTorch)."""
  for variable in ("SMD_CPU_FORWARD_OPTIONS", "SMD_CPU_ONEDNN_DOTS"):
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setenv("SMD_SPLIT_FORWARD", "0")  # one program, to read its libraries
  monkeypatch.setattr(xla_options, "persistent_cache_on", lambda: False)
  # EfficientNet-b2's blocks at toy width and depth, so that it compiles in seconds.
  monkeypatch.setitem(registry.ENCODERS, "tiny", TINY_ENCODERS["efficientnet_b2"])
  config = toy_config.get_config()
  config.model.encoder = "tiny"
  mesh = data_parallel.make_mesh(1)
  built, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0), 10, mesh)
  rng = np.random.default_rng(0)
  batch = data_parallel.to_global(
      {"image": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
       "depth": np.ones((2, 32, 32), np.float32), "semantic": np.ones((2, 32, 32), np.int16)},
      mesh)
  compiled = built.predict_step.lower(state, batch).compile()
  assert "dot" in library_fusion_kinds(compiled.as_text(), "onednn")
  forward_state = steps_lib.ForwardState(state.params, state.model_state)
  got = np.asarray(compiled(forward_state, batch))
  want = jax.jit(built.predict_step.jitted.__wrapped__)(forward_state, batch)  # no options
  # Metres (sigmoid x 15, 1-10 m here): the two differ in summation order only, measured
  # 3.8e-6 m (4 float32 ulps of 8 m); 5e-5 m is 13x that, while any one of the 1x1
  # convs tried (an expansion, a squeeze-and-excitation one) off by 0.1% moves the
  # depth by 1e-4 - 5e-3 m.
  np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=5e-5)
  assert np.ptp(got) > 1e-3  # the predictions vary: not a constant both sides agree on
