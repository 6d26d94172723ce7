"""Timing helpers shared by the benchmarks: repeated runs, medians, machine facts."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Callable


@dataclasses.dataclass
class Timing:
  """Seconds of each timed repeat (warm-up excluded) and what one repeat processes."""

  times: list[float]
  items: int  # images / samples / frames per repeat

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)

  @property
  def per_s(self) -> float:
    """Items per second at the median repeat."""
    return self.items / self.median_s

  @property
  def spread(self) -> float:
    """(max - min) / median of the repeats: how noisy the figure is."""
    return (max(self.times) - min(self.times)) / self.median_s


def repeat(fn: Callable[[], object], *, repeats: int, warmup: int, items: int) -> Timing:
  """Calls `fn` warmup times untimed, then `repeats` times timed. `fn` must block
  until its work is done (e.g. `jax.block_until_ready`, `torch.cuda.synchronize`)."""
  return interleave({"": fn}, repeats=repeats, warmup=warmup, items=items)[""]


def interleave(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
               items: int, settle: int = 0) -> dict[str, Timing]:
  """`repeat` for several sides at once, round by round: each side warms up, then every
  round times each side once, in reversed order every other round. A shared machine's
  speed drifts by a third or more within minutes; timed block after block, one side
  could get the fast minutes and the other the slow ones.

  `settle`: untimed calls of a side right before each of its timed calls, so that a
  timed step follows a step of its own, as in training, where steps run back to back.
  On a virtual machine a step that comes after its process has idled for a second
  (while the other side ran) can take 1.5-3x as long (docs/benchmarks.md, "A step
  after idling")."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  if settle < 0:
    raise ValueError(f"settle must be >= 0, got {settle}")
  order = list(fns)
  for name in order:
    for _ in range(warmup):
      fns[name]()
  times = {name: [] for name in order}
  for round_index in range(repeats):
    for name in (order if round_index % 2 == 0 else order[::-1]):
      for _ in range(settle):
        fns[name]()
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: Timing(times[name], items) for name in order}


def load_average() -> float | None:
  """1-minute load average (the machine may be shared: say so next to every figure)."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def machine() -> dict:
  """Facts to record with every figure: date, CPU, cores, library versions."""
  info = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
      # Both sides' allocator settings (smd_jax/huge_pages.py).
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
  }
  try:  # timm and smp import only after the torchvision stand-ins (see reference.py)
    from smd_jax.convert import reference  # pylint: disable=g-import-not-at-top
    reference.import_reference()
  except ImportError:
    pass
  for name in ("jax", "flax", "torch", "timm", "segmentation_models_pytorch", "grain"):
    try:
      module = __import__(name)
      info[name] = getattr(module, "__version__", "?")
    except Exception:  # pylint: disable=broad-except
      info[name] = None
  return info


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
