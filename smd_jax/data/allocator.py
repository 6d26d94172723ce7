"""glibc malloc settings for a process that reads large records.

Reading a 256 px example allocates ~0.59 MB several times (array_record's copy of
the record, its Python `bytes`, the batch), on grain's reader threads. glibc
serves such blocks with fresh `mmap`s or from arena tops it returned to the
system, so every example faults its pages in again: ~185 minor page faults per
256 px example in the input pipeline, which then ran 1.4-1.7x slower than with
the freed memory kept (docs/data.md, "Storage format"). `keep_freed_memory`
sets glibc's thresholds so blocks below 32 MiB come from the heap and up to
64 MiB of freed memory per arena stays in the process for the next example.

The cost is that memory: a process may keep up to 64 MiB per malloc arena it
freed and not reused. SMD_KEEP_FREED_MEMORY=0 leaves glibc's defaults. Other C
libraries (macOS, musl) are left alone, and so is a process that started with
glibc's own thresholds in GLIBC_TUNABLES: the commands start so
(`smd_jax/huge_pages.py`, which keeps up to 4 GiB), and lowering its trim
threshold to 64 MiB here would give back the memory their steps reuse.
"""

from __future__ import annotations

import ctypes
import functools
import os

from smd_jax import env_flags, huge_pages

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit
TRIM_THRESHOLD = 64 << 20
# The same thresholds as glibc tunables, read when a process starts.
THRESHOLD_TUNABLES = {"glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"}


def _glibc():
  """The running process's glibc, or None under another C library."""
  libc = ctypes.CDLL(None)
  return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
  """Sets the thresholds above in this process, once; whether freed memory is kept:
  glibc took them, or GLIBC_TUNABLES sets them already (left as they are). False off
  glibc or with SMD_KEEP_FREED_MEMORY=0."""
  if not env_flags.on_off("SMD_KEEP_FREED_MEMORY", True):
    return False
  libc = _glibc()
  if libc is None:
    return False
  if huge_pages.tunables_set(os.environ) & THRESHOLD_TUNABLES:
    return True
  return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
      libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
