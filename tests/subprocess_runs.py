"""Helpers for tests that run `smd_jax.train` in subprocesses (tests/train_subprocess.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.xla_flags import xla_flags

TESTS = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(TESTS, "train_subprocess.py")
TOY_CONFIG = os.path.join(TESTS, "toy_config.py")


def start_training(workdir: str, *flags: str, devices: int = 2, cache_dir: str | None = None,
                   env: dict[str, str] | None = None) -> subprocess.Popen:
  """Starts the toy config's training in `workdir` on `devices` simulated CPU devices."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu",
                  XLA_FLAGS=xla_flags(devices), **(env or {}))
  if cache_dir:  # later runs of the same programs load their executables instead of compiling
    # Every program, as in the test processes (tests/conftest.py): a run also compiles
    # dozens of one-operation programs (the optimizer state's zeros, one per shape), and
    # loading them saved 11% of the fault-tolerance and multi-host tests' CPU time
    # against a floor of 0.5 s (docs/benchmarks.md "Test suite"). An entry read while
    # another process writes it fails to decompress: JAX warns and compiles instead.
    full_env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, RUNNER, "--config", TOY_CONFIG, "--workdir", workdir, *flags]
  return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
  """Waits for `proc` (killing it after `timeout` s: a hang fails the test, not CI)."""
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"Training did not finish in {timeout} s.\n{err[-3000:]}") from None
  return proc.returncode, out, err


def wait_for_file(path: str, proc: subprocess.Popen, timeout: float = 400) -> None:
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"Training ended (rc {proc.returncode}) before {path} appeared.\n"
                           f"{proc.stderr.read()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"{path} did not appear within {timeout} s.")
    time.sleep(0.05)


def train_losses(workdir: str) -> dict[int, float]:
  """train/loss per step from metrics.jsonl; a resumed run's later record of a step wins.

  Lines cut short by a killed process are skipped.
  """
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if "train/loss" in record:
        out[record["step"]] = record["train/loss"]
  return out


def tree_snapshot(path: str) -> dict[str, tuple[int, bytes]]:
  """Every file under `path` with its size and contents (empty if `path` does not exist)."""
  snap = {}
  for root, dirs, files in os.walk(path):
    for d in dirs:
      snap[os.path.relpath(os.path.join(root, d), path) + "/"] = (0, b"")
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        snap[os.path.relpath(full, path)] = (os.path.getsize(full), f.read())
  return snap


def load_checkpoint(workdir: str, step: int) -> dict:
  """The saved train state of `step` as a tree of numpy arrays (on one device)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata).tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree)
  return jax.tree.map(np.asarray, checkpointer.restore(path, abstract))
