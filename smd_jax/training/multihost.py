"""Multi-host start-up and preemption handling.

`initialize` starts `jax.distributed` when the run spans several processes:
explicitly (coordinator address, process count and id, e.g. GPU nodes without a
cluster manager), on request with JAX's own cluster detection (Cloud TPU pod
slices), or by itself under SLURM / Open MPI. A single-process run needs nothing.

`PreemptionWatch` tells the training loop when to save and stop: on SIGTERM
(single process), or at JAX's preemption sync point (several processes: the
coordination service catches the signal on any host and makes every process
stop at the same step, so their checkpoints agree).
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from smd_jax.errors import UserError

def _launched_as_several_processes() -> bool:
  """True under SLURM or Open MPI with more than one task (JAX reads the rest itself)."""
  return (int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
  """Starts `jax.distributed` when needed; call before anything else touches JAX devices.

  Explicit: all of `coordinator_address`, `num_processes`, `process_id`.
  `auto=True`: JAX detects the cluster (Cloud TPU pod slices, SLURM, Open MPI, k8s).
  Neither: started only under SLURM / Open MPI with several tasks; else one process.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise UserError("Multi-process runs need all of --coordinator_address HOST:PORT, "
                      "--num_processes N and --process_id I (0..N-1), or none of them "
                      "(--jax_distributed on TPU pods; automatic under SLURM).")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} must be in [0, {num_processes}).")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif auto or _launched_as_several_processes():
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def all_agree(ok: bool) -> bool:
  """True on every process if `ok` on all of them (a collective on multi-host runs)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def from_process_0(ok: bool) -> bool:
  """Process 0's `ok`, on every process (a collective on multi-host runs)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


class PreemptionWatch:
  """`should_stop(step)`: True at the step where every process should save and exit.

  Single process: set by SIGTERM (the handler only sets a flag; the loop saves at
  the next step boundary). Several processes: JAX's preemption sync point, which
  all processes reach at the same step. Use as a context manager so the previous
  SIGTERM handler comes back afterwards.
  """

  def __init__(self):
    self._signalled = False
    self._previous = None

  def _on_sigterm(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint at the next step, then exiting.",
                    signum)
    self._signalled = True

  def __enter__(self) -> PreemptionWatch:
    # Signal handlers can only be set from the main thread (a loop run from another
    # thread, e.g. in a notebook helper, is simply not preemptible by SIGTERM).
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
