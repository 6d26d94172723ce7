"""The run's writer (smd_jax/training/metric_writer.py) in a fresh process: TensorBoard
events and the JSONL log, without importing PyTorch where it is installed."""

import importlib.util
import json
import os
import subprocess
import sys

from tests import torch_reference

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

WRITE = """
import importlib.util, sys
from smd_jax.training import metric_writer
writer = metric_writer.MetricWriter(sys.argv[1])
writer.scalars(3, {"loss": 0.5, "bad": float("nan")}, prefix="train/")
writer.close()
# Not imported, and no entry left behind that would break a later `import torch`.
assert "torch" not in sys.modules, sys.modules.get("torch", "a None entry")
assert importlib.util.find_spec("torch") is not None
"""


def test_writes_events_and_jsonl_without_importing_torch(tmp_path):
  if importlib.util.find_spec("torch") is None:
    torch_reference.import_torch()  # skips (or fails where required) with the reason
  run = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  events = os.listdir(tmp_path / "tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line) for line in f] == [
        {"step": 3, "train/loss": 0.5, "train/bad": "nan"}]
