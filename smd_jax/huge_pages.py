"""glibc's allocator settings for a command's large allocations (Linux, glibc >= 2.35).

Why: XLA:CPU allocates a step's buffers afresh at every call. glibc serves blocks that
large with fresh `mmap`s and unmaps them when they are freed, so every step faults its
whole working set in again, 4 KiB at a time: ~414,000 minor page faults per
EfficientNet-b4 UNet train step at 2x256x256 (1.7 GB), a third of the step's CPU time
spent in the kernel. Two groups of glibc tunables (`TUNABLES`) fix that:

- `glibc.malloc.hugetlb=1`: malloc asks for transparent huge pages (`madvise`) for the
  blocks it maps: ~2,000 faults per step, the train step ~1.5x faster (2026-12-05).
- keeping freed memory: blocks up to 32 MiB (glibc's largest mmap threshold) come from
  the heap, which grows 256 MiB at a time and gives freed memory back only above 4 GiB.
  With huge pages alone the eval step at 2x256x256 still faulted ~590 pages a step
  and took 0.12-0.29 s beside PyTorch's steps; with this a steady 0.12-0.14 s, the
  train step level (2026-12-06). The cost: a process keeps up to its peak of freed
  memory instead of returning it to the system.

Measured in docs/benchmarks.md, "Memory: huge pages and freed memory". glibc reads its
tunables once, when a process starts, so the commands (`python -m smd_jax.train`,
`evaluate`, `predict`, `benchmarks.run`, ...) re-execute themselves with them added to
`GLIBC_TUNABLES` (`reexec_with_huge_pages`), first thing, with the same interpreter,
arguments and environment. Nothing happens off Linux, under glibc older than 2.35 (the
huge-page tunable's first release) or another C library, when the kernel's transparent
huge pages are off ('never'), when GLIBC_TUNABLES already sets any of `TUNABLES` (the
user's own choice stands), or with SMD_HUGE_PAGES=0.
"""

from __future__ import annotations

import os
import sys

from smd_jax import env_flags
from smd_jax.errors import UserError

# glibc tunable -> the value the commands give it (see the module's docstring).
TUNABLES = {
    "glibc.malloc.hugetlb": "1",  # transparent huge pages for the blocks malloc maps
    "glibc.malloc.mmap_threshold": str(32 << 20),  # blocks up to 32 MiB from the heap,
    "glibc.malloc.trim_threshold": str(4 << 30),  # which keeps up to 4 GiB freed
    "glibc.malloc.top_pad": str(256 << 20),  # and grows 256 MiB at a time
}
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


def tunables_set(environ) -> set[str]:
  """The names of the glibc tunables that `environ`'s GLIBC_TUNABLES sets."""
  return {item.split("=")[0] for item in environ.get("GLIBC_TUNABLES", "").split(":") if item}


def tuned_environment(environ, *, glibc: tuple[int, int] | None, thp: str | None
                      ) -> dict[str, str] | None:
  """`environ` with `TUNABLES` added to GLIBC_TUNABLES, or None where there is nothing
  to do or GLIBC_TUNABLES already sets one of them (see the module's docstring)."""
  if not env_flags.on_off("SMD_HUGE_PAGES", True):
    return None
  if glibc is None or glibc < FIRST_GLIBC or thp not in ("always", "madvise"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if tunables_set(environ) & TUNABLES.keys():
    return None
  ours = [f"{name}={value}" for name, value in TUNABLES.items()]
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join([tunables, *ours] if tunables else ours)
  return env


def tuned_environment_here(environ) -> dict[str, str] | None:
  """`tuned_environment` for this machine's glibc and kernel."""
  return tuned_environment(environ, glibc=glibc_version(), thp=thp_mode())


def reexec_with_huge_pages() -> None:
  """Re-executes this process with `TUNABLES` set (does not return), or returns where
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
