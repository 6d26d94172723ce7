"""glibc's allocator tunables for the commands (smd_jax/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from smd_jax import huge_pages
from smd_jax.errors import UserError

# Huge pages, and freed memory kept: blocks up to 32 MiB from the heap, trimmed only
# above 4 GiB free, grown 256 MiB at a time.
TUNABLE = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
           "glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456")


@pytest.fixture(autouse=True)
def _switch_unset(monkeypatch):
  monkeypatch.delenv("SMD_HUGE_PAGES", raising=False)


def tuned(environ, glibc=(2, 36), thp="madvise"):
  env = huge_pages.tuned_environment(environ, glibc=glibc, thp=thp)
  return None if env is None else env.get("GLIBC_TUNABLES")


def test_tunable_is_added_where_it_can_work():
  assert tuned({}) == TUNABLE
  assert tuned({}, thp="always") == TUNABLE
  assert tuned({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == (
      "glibc.malloc.arena_max=2:" + TUNABLE)
  assert huge_pages.tuned_environment({"PATH": "/bin"}, glibc=(2, 35), thp="madvise") == {
      "PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}
  # Nothing to do: one of them already set (any value: the user's choice stands), too
  # old a glibc or none, THP off or unknown.
  assert tuned({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert tuned({"GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=2"}) is None
  assert tuned({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is None
  assert tuned({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0:a.b=1"}) is None
  assert tuned({}, glibc=(2, 34)) is None
  assert tuned({}, glibc=None) is None
  assert tuned({}, thp="never") is None
  assert tuned({}, thp=None) is None


def test_switch(monkeypatch):
  monkeypatch.setenv("SMD_HUGE_PAGES", "0")
  assert tuned({}) is None
  monkeypatch.setenv("SMD_HUGE_PAGES", "no")
  with pytest.raises(UserError, match="SMD_HUGE_PAGES"):
    tuned({})


def test_thp_mode_and_glibc_version(tmp_path):
  path = tmp_path / "enabled"
  for text, mode in (("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                     ("always madvise [never]", "never"), ("garbage", None)):
    path.write_text(text)
    assert huge_pages.thp_mode(str(path)) == mode
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None
  version = huge_pages.glibc_version()
  assert version is None or (len(version) == 2 and version >= (2, 0))


# A process that (after re-executing itself) mallocs, fills and frees blocks twice, as
# XLA does a step's buffers, and prints the minor page faults of the second time: one
# 256 MiB block (`faults`), and twenty 16 MiB blocks live at once (`kept`). Through libc,
# not NumPy: NumPy asks for huge pages itself.
_PROBE = """
import ctypes, os, resource
from smd_jax import huge_pages
print("started", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
huge_pages.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def fill_and_free(sizes):
  blocks = [libc.malloc(size) for size in sizes]
  for block, size in zip(blocks, sizes):
    ctypes.memset(block, 1, size)
  for block in blocks:
    libc.free(block)
def faults_the_second_time(sizes):
  fill_and_free(sizes)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  fill_and_free(sizes)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print("faults", faults_the_second_time([256 << 20]))
print("kept", faults_the_second_time([16 << 20] * 20))
"""


def _probe(env):
  """(the `started` lines, {"faults": n, "kept": n})."""
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split("\n")
  counts = {line.split()[0]: int(line.split()[1]) for line in out
            if line.startswith(("faults ", "kept "))}
  return [line for line in out if line.startswith("started")], counts


@pytest.mark.skipif(huge_pages.tuned_environment_here({}) is None,
                    reason="no glibc >= 2.35 with transparent huge pages on this machine")
def test_command_reexecutes_itself_and_faults_fewer_pages():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SMD_HUGE_PAGES")}
  starts, tuned_counts = _probe(env)
  # Started twice: once as launched, once re-executed with the tunables.
  assert starts == ["started ", "started " + TUNABLE], starts
  starts_off, off_counts = _probe({**env, "SMD_HUGE_PAGES": "0"})
  assert starts_off == ["started "], starts_off
  # 256 MiB in 4 KiB pages is 65,536 faults; in 2 MiB pages, 128.
  faults, faults_off = tuned_counts["faults"], off_counts["faults"]
  assert faults_off > 30_000 and faults < faults_off / 10, (faults, faults_off)
  # Huge pages alone (a user's GLIBC_TUNABLES: nothing added, no re-execution): glibc
  # gives the 320 MiB back when it is freed and faults it in again, >= 160 pages of
  # 2 MiB (159-604 measured). With the heap kept, the second time reuses the pages
  # of the first: 0 measured; 40 leaves room for the interpreter's own allocations,
  # while the mmap threshold alone, without the trim threshold, faults ~160.
  starts_huge, huge_counts = _probe({**env, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  assert starts_huge == ["started glibc.malloc.hugetlb=1"], starts_huge
  kept, kept_huge = tuned_counts["kept"], huge_counts["kept"]
  assert kept_huge >= 120 and kept <= 40, (kept, kept_huge)


@pytest.mark.skipif(huge_pages.tuned_environment_here({}) is None,
                    reason="no glibc >= 2.35 with transparent huge pages on this machine")
@pytest.mark.parametrize("command", ["smd_jax.train", "smd_jax.evaluate", "smd_jax.predict",
                                     "smd_jax.experiments", "smd_jax.convert"])
def test_command_reexecutes_before_it_imports_jax(command):
  """The first process only re-executes: jax (~1.5 s of imports) is imported once, by
  the second (`-X importtime` is passed on with the arguments)."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SMD_HUGE_PAGES")}
  proc = subprocess.run([sys.executable, "-X", "importtime", "-m", command, "--helpshort"],
                        env=env, capture_output=True, text=True, timeout=120, check=False)
  imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
              if line.startswith("import time:")]
  assert imported.count("smd_jax.huge_pages") == 2, proc.stderr[-2000:]  # two processes
  assert imported.count("jax") == 1, proc.stderr[-2000:]
