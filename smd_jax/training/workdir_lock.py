"""One training process per workdir: a lock file naming its holder.

`<workdir>/train.lock` holds the holder's host name, process id and process
start time (JSON). It is created atomically (O_EXCL), so of two runs started in
one workdir exactly one gets it; the other stops with one line naming the
holder before it writes anything. The holder deletes the file when it exits in
any way Python sees (return, exception, SIGTERM through the preemption path).

A process killed with SIGKILL (or a crashed machine) leaves the file behind.
On the same host the lock is stale when no process with that id runs, or when
one does but started at another time (the id was reused); a stale lock is taken
over with a warning. A lock of another host cannot be checked from here: the
message names that host and says to delete the file once that run is gone.

Multi-host runs: only process 0 holds the lock (the workdir is one shared
directory, see docs/scaling.md); the trainer tells the other processes whether
it got it.
"""

from __future__ import annotations

import json
import os
import socket
import time

from absl import logging

from smd_jax.errors import UserError

LOCK_NAME = "train.lock"


def _start_time(pid: int) -> str | None:
  """The start time of process `pid` in clock ticks since boot (Linux), else None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # Field 22; the command name (field 2) may contain spaces, so count after its ")".
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _describe(holder: dict) -> str:
  started = holder.get("started_utc", "?")
  return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {started})"


class WorkdirLock:
  """Context manager: holds `<workdir>/train.lock` for its duration.

  `acquire` raises `UserError` (one line, naming the holder) when a live run
  holds the lock, and writes nothing in that case. A workdir that `acquire`
  created is removed again on release if nothing else was written in it.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._held = False
    self._created_workdir = False

  def _record(self) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_ticks": _start_time(pid),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

  def _read_holder(self) -> dict | None:
    """The lock file's record; None if it vanished meanwhile; {} if unreadable."""
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # cut short by a crash while it was being written

  def _is_stale(self, holder: dict) -> bool:
    """True when `holder` surely no longer runs (only checkable on this host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
      return False
    pid = holder["pid"]
    if not _alive(pid):
      return True
    recorded, now = holder.get("start_ticks"), _start_time(pid)
    return recorded is not None and now is not None and recorded != now  # pid reused

  def acquire(self) -> None:
    if not os.path.isdir(self.workdir):
      os.makedirs(self.workdir, exist_ok=True)
      self._created_workdir = True
    record = json.dumps(self._record()).encode()
    for _ in range(3):  # a stale lock taken over, or one released meanwhile: try again
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        holder = self._read_holder()
        if holder is None:
          continue
        if not holder:
          self._release_workdir()
          raise UserError(
              f"{self.path} exists but cannot be read (a run that crashed while taking it?); "
              "delete it if no training runs in this workdir, then run again.")
        if self._is_stale(holder):
          logging.warning("Taking over the lock of %s, which no longer runs (%s).",
                          _describe(holder), self.path)
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        self._release_workdir()
        elsewhere = holder.get("host") != socket.gethostname()
        hint = (" If that run is gone (its host crashed), delete the file." if elsewhere else "")
        raise UserError(
            f"The workdir {self.workdir} is in use by a training run: {_describe(holder)} "
            f"holds {self.path}. Wait for it to finish or use another --workdir.{hint}")
      with os.fdopen(fd, "wb") as f:
        f.write(record)
      self._held = True
      return
    raise UserError(f"Could not take {self.path}: other processes keep taking it.")

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    self._release_workdir()

  def _release_workdir(self) -> None:
    # Bad input must leave no trace: remove a workdir we created if it stayed empty.
    if self._created_workdir:
      self._created_workdir = False
      try:
        os.rmdir(self.workdir)
      except OSError:
        pass  # not empty: the run wrote its outputs there

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
