"""The SMD_* on/off switches: one rule (1 on, 0 off, unset the default), a typo is an error."""

import os
import re
from unittest import mock

import jax
import jax.numpy as jnp
import pytest
from ml_collections import config_dict

from smd_jax import cli, env_flags, huge_pages
from smd_jax.data import allocator
from smd_jax.errors import UserError
from smd_jax.models import conv_formulations
from smd_jax.training import data_parallel, steps as steps_lib, trainer, xla_options
from tests import xla_flags


@pytest.mark.parametrize("default", [True, False])
def test_on_off(monkeypatch, default):
  monkeypatch.delenv("SMD_SWITCH", raising=False)
  assert env_flags.on_off("SMD_SWITCH", default) is default
  for value, want in (("1", True), ("0", False), ("", default)):
    monkeypatch.setenv("SMD_SWITCH", value)
    assert env_flags.on_off("SMD_SWITCH", default) is want
  for typo in ("yes", "off", "true", " 1", "2"):
    monkeypatch.setenv("SMD_SWITCH", typo)
    with pytest.raises(UserError, match=f"SMD_SWITCH must be 1 \\(on\\) or 0 \\(off\\).*{typo!r}"):
      env_flags.on_off("SMD_SWITCH", default)


def _compiles_ahead(tmp_path):
  config = config_dict.ConfigDict({"num_train_steps": 5, "data": {"synthetic": {"enabled": True}}})
  return trainer.compiles_ahead(config, str(tmp_path / "run"))


def _keeps_freed_memory():
  allocator.keep_freed_memory.cache_clear()
  try:
    return allocator.keep_freed_memory()
  finally:
    allocator.keep_freed_memory.cache_clear()


def _wide_vectors():
  with mock.patch.object(xla_options, "cpu_has_avx512", lambda: True):  # any machine
    return "xla_cpu_prefer_vector_width" in (
        xla_options.compiler_options("cpu", xla_options.TRAIN) or {})


def _onednn_dots():
  with (mock.patch.object(xla_options, "cpu_is_x86", lambda: True),  # any machine
        mock.patch.object(xla_options, "persistent_cache_on", lambda: False)):
    return (xla_options.compiler_options("cpu", xla_options.FORWARD) or {}).get(
        "xla_cpu_experimental_onednn_fusion_type") == "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def _cpu_formulation(x_shape, w_shape, groups=1):
  return conv_formulations.conv_formulation(
      x_shape, w_shape, ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, backend="cpu")


# Every switch of the project, read through its user.
SWITCHES = {
    "SMD_DEPTHWISE_VJP": lambda _: _cpu_formulation((2, 8, 8, 4), (3, 3, 1, 4), 4) == "taps_vjp",
    "SMD_KXK_DOTS": lambda _: _cpu_formulation((2, 8, 8, 64), (3, 3, 64, 8)) == "kxk_dots",
    "SMD_SUBPIXEL_UPSAMPLE": lambda _: conv_formulations.upsample_conv_formulation("cpu")
                                       == "subpixel",
    "SMD_SINGLE_OUTPUT_CONV": lambda _: _cpu_formulation((2, 8, 8, 16), (3, 3, 16, 1))
                                        == "single_output",
    "SMD_POOLING_DOT": lambda _: "dot_general" in str(jax.make_jaxpr(
        lambda x: conv_formulations.spatial_mean(x, "cpu"))(jnp.ones((2, 4, 4, 3)))),
    "SMD_CPU_FORWARD_OPTIONS": lambda _: "xla_cpu_experimental_ynn_fusion_type" in (
        xla_options.compiler_options("cpu", xla_options.FORWARD) or {}),
    "SMD_CPU_ONEDNN_DOTS": lambda _: _onednn_dots(),
    "SMD_CPU_WIDE_VECTORS": lambda _: _wide_vectors(),
    "SMD_COMPILE_AHEAD": _compiles_ahead,
    "SMD_KEEP_FREED_MEMORY": lambda _: _keeps_freed_memory(),
    "SMD_SPLIT_FORWARD": lambda _: steps_lib.ForwardStep(
        lambda state, batch: batch, data_parallel.make_mesh(1), None)._split_on,
    "SMD_HUGE_PAGES": lambda _: huge_pages.tuned_environment(
        {}, glibc=(2, 39), thp="madvise") is not None,
}


def test_the_list_of_switches_is_complete():
  """`env_flags.SWITCHES` (which the commands check first) names every switch above."""
  assert sorted(env_flags.SWITCHES) == sorted(SWITCHES)


@pytest.mark.parametrize("variable", sorted(SWITCHES))
def test_commands_check_every_switch_first(monkeypatch, variable):
  """`cli.report_user_errors` stops with one line before its function runs."""
  ran = []
  monkeypatch.setenv(variable, "on")
  assert cli.report_user_errors(lambda: ran.append(1)) == 1
  assert ran == []
  monkeypatch.setenv(variable, "0")
  assert cli.report_user_errors(lambda: ran.append(1)) == 0 and ran == [1]


@pytest.mark.parametrize("variable", sorted(SWITCHES))
def test_every_switch_follows_the_rule(monkeypatch, tmp_path, variable):
  read = SWITCHES[variable]
  monkeypatch.setenv(variable, "0")
  assert read(tmp_path) is False
  if variable != "SMD_KEEP_FREED_MEMORY" or allocator._glibc() is not None:  # glibc only
    monkeypatch.setenv(variable, "1")
    assert read(tmp_path) is True
  monkeypatch.setenv(variable, "yes")
  with pytest.raises(UserError, match=variable):
    read(tmp_path)


def test_test_xla_flags(monkeypatch):
  """The tests' fast compile: on by default, off with SMD_TEST_XLA_FAST=0, never twice."""
  monkeypatch.delenv("SMD_TEST_XLA_FAST", raising=False)
  assert xla_flags.xla_flags(2).split() == [
      "--xla_force_host_platform_device_count=2", "--xla_backend_optimization_level=0"]
  inherited = xla_flags.xla_flags(8, "--xla_dump_to=/tmp/x")
  assert inherited.split()[0] == "--xla_dump_to=/tmp/x"
  assert xla_flags.xla_flags(2, inherited).count("--xla_backend_optimization_level=0") == 1
  monkeypatch.setenv("SMD_TEST_XLA_FAST", "0")
  assert xla_flags.xla_flags(2).split() == ["--xla_force_host_platform_device_count=2"]
  monkeypatch.setenv("SMD_TEST_XLA_FAST", "no")
  with pytest.raises(UserError, match="SMD_TEST_XLA_FAST"):
    xla_flags.xla_flags(2)


def _readme_switch_table() -> dict[str, str]:
  """README's switch table: variable -> its default column."""
  path = os.path.join(os.path.dirname(__file__), "..", "README.md")
  with open(path, encoding="utf-8") as f:
    rows = re.findall(r"^\| `(SMD_[A-Z_]+)` \| ([^|]+) \|", f.read(), re.MULTILINE)
  return {variable: default.strip() for variable, default in rows}


def test_readme_documents_every_switch_and_its_default():
  table = _readme_switch_table()
  assert sorted(table) == sorted(env_flags.SWITCHES)
  for variable, default in conv_formulations.SWITCH_VARIABLES.values():
    assert table[variable] == str(int(default)), variable
