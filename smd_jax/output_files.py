"""Files written whole or not at all: a temporary file in the same folder, renamed into place.

A crash or a kill mid-write leaves the previous file (or none), never half of
one, so results, configs and pictures can always be read back.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import IO, Iterator

import numpy as np
from absl import logging
from PIL import Image


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
  """`open(path, mode)` whose content appears at `path` only when the block completes."""
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path: str, values: dict) -> None:
  """JSON without NaN (not valid JSON): NaN/inf become null."""
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in values.items()}
  with atomic_open(path) as f:
    json.dump(clean, f, indent=2, sort_keys=True)
  logging.info("Wrote %s", path)


def write_png(path: str, image: np.ndarray) -> None:
  """image: [H,W,3] or [H,W] uint8 (or uint16 for [H,W])."""
  with atomic_open(path, "wb") as f:
    Image.fromarray(image).save(f, format="PNG")
