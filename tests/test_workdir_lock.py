"""One training run per workdir: the lock file, its holder, stale locks."""

import json
import os
import socket
import subprocess
import sys

import pytest

from smd_jax.errors import UserError
from smd_jax.training import workdir_lock


def _dead_pid() -> int:
  """The id of a process that has exited (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _plant(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME), "w") as f:
    json.dump(dict({"host": socket.gethostname(), "started_utc": "then"}, **record), f)


def test_second_holder_is_refused_with_one_line_naming_the_first(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.WorkdirLock(workdir):
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      before = f.read()
    with pytest.raises(UserError) as e:
      workdir_lock.WorkdirLock(workdir).acquire()
    message = str(e.value)
    assert "\n" not in message
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      assert f.read() == before  # the holder's lock is untouched
  assert os.listdir(tmp_path) == []  # released; the workdir it created (empty) is gone too


def test_released_on_an_exception(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(ZeroDivisionError):
    with workdir_lock.WorkdirLock(workdir):
      1 / 0  # pylint: disable=pointless-statement
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  assert os.path.isdir(workdir)  # existed before: kept


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
  workdir = str(tmp_path)
  _plant(workdir, pid=_dead_pid(), start_ticks="1")
  with workdir_lock.WorkdirLock(workdir):
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      assert json.load(f)["pid"] == os.getpid()


def test_lock_of_a_reused_pid_is_taken_over(tmp_path):
  # This process runs, but it started at another time than the recorded holder.
  workdir = str(tmp_path)
  _plant(workdir, pid=os.getppid(), start_ticks="-1")
  with workdir_lock.WorkdirLock(workdir):
    pass


def test_live_holder_and_other_hosts_are_respected(tmp_path):
  workdir = str(tmp_path)
  _plant(workdir, pid=os.getppid(), start_ticks=workdir_lock._start_time(os.getppid()))
  with pytest.raises(UserError, match=f"process {os.getppid()} on host"):
    workdir_lock.WorkdirLock(workdir).acquire()
  _plant(workdir, pid=_dead_pid(), host="elsewhere.example", start_ticks="1")
  with pytest.raises(UserError, match="on host elsewhere.example .*delete the file"):
    workdir_lock.WorkdirLock(workdir).acquire()
  assert os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
