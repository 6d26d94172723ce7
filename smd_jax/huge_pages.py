"""Transparent huge pages for a command's large allocations (Linux, glibc).

Why: XLA:CPU allocates a step's buffers afresh at every call. glibc serves blocks that
large with fresh `mmap`s and unmaps them when they are freed, so every step faults its
whole working set in again, 4 KiB at a time: ~414,000 minor page faults per
EfficientNet-b4 UNet train step at 2x256x256 (1.7 GB), a third of the step's CPU time
spent in the kernel. glibc's tunable `glibc.malloc.hugetlb=1` makes malloc ask for
transparent huge pages for those blocks (`madvise`): ~2,000 faults per step, and the
step runs ~1.5x faster (2026-12-05, docs/benchmarks.md "Memory: huge pages").

glibc reads its tunables once, when a process starts, so the commands
(`python -m smd_jax.train`, `evaluate`, `predict`, `benchmarks.run`, ...) re-execute
themselves with it added to `GLIBC_TUNABLES` (`reexec_with_huge_pages`), first thing,
with the same interpreter, arguments and environment. Nothing happens off Linux, under
glibc older than 2.35 (the tunable's first release) or another C library, when the
kernel's transparent huge pages are off ('never'), when the tunable is already set,
or with SMD_HUGE_PAGES=0.
"""

from __future__ import annotations

import os
import sys

from smd_jax import env_flags
from smd_jax.errors import UserError

TUNABLE = "glibc.malloc.hugetlb"
FIRST_GLIBC = (2, 35)
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None under another C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, OSError, ValueError):
    return None
  if name != "glibc":
    return None
  try:
    return tuple(int(part) for part in version.split(".")[:2])
  except ValueError:
    return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def tuned_environment(environ, *, glibc: tuple[int, int] | None, thp: str | None
                      ) -> dict[str, str] | None:
  """`environ` with the tunable added to GLIBC_TUNABLES, or None where it has nothing to
  do or is already there (see the module's docstring)."""
  if not env_flags.on_off("SMD_HUGE_PAGES", True):
    return None
  if glibc is None or glibc < FIRST_GLIBC or thp not in ("always", "madvise"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(item.split("=")[0] == TUNABLE for item in tunables.split(":")):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, f"{TUNABLE}=1") if t)
  return env


def tuned_environment_here(environ) -> dict[str, str] | None:
  """`tuned_environment` for this machine's glibc and kernel."""
  return tuned_environment(environ, glibc=glibc_version(), thp=thp_mode())


def reexec_with_huge_pages() -> None:
  """Re-executes this process with the tunable set (does not return), or returns where
  there is nothing to do or the exec fails. Call it first in a command's `__main__`."""
  if not sys.platform.startswith("linux"):
    return
  try:
    env = tuned_environment_here(os.environ)
  except UserError as e:  # a typo in SMD_HUGE_PAGES: one line, as the commands do
    sys.exit(f"error: {e}")
  if env is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, env)
  except OSError:
    return  # e.g. the interpreter is gone: run on with glibc's defaults
