"""One writer for everything a run reports: TensorBoard events, a JSONL log, absl logs.

Only process 0 writes; on other processes every method is a no-op, so the
training loop can call it unconditionally.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping

import jax
import numpy as np
from absl import logging


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed (only to accept torch tensors, which
  we never pass): 2.5 s of every training process's start where the `torch` extra is
  installed. A `None` entry in `sys.modules` makes that import fail as if torch were
  absent; it is removed again at once, and an already imported torch is left alone.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = _summary_writer_class()(logdir=os.path.join(workdir, "tensorboard"))
      path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(path, "a")
      if self._jsonl.tell() and not _ends_with_newline(path):
        self._jsonl.write("\n")  # a killed run's cut-off line stays one (skippable) line

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    values = {f"{prefix}{k}": float(v) for k, v in values.items()}
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    # JSON has no NaN/inf: write them as strings so the file stays parseable.
    clean = {k: v if math.isfinite(v) else str(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """image: [H,W,3] uint8."""
    if self.enabled:
      self._tb.add_image(tag, image, step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
