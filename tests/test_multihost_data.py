"""Multi-host runs on hosts without a shared file system: each host's data set is checked.

Two JAX processes on localhost stand for two hosts; each gets its own
`--config.data.data_dir`, as two hosts see different disks behind one path.
Process 0 builds its copy; process 1 finds none in its own directory and builds
it locally from the raw frames (the same builder and config). Without raw
frames there, every process stops with one line.
"""

import os
import re
import socket

import pytest

import tfds_hypersim
from tests import subprocess_runs as runs

VERSION = str(tfds_hypersim.Builder.VERSION)  # the builder's current data-set version

pytestmark = pytest.mark.timeout(900)

FLAGS = ("--config.num_train_steps=2", "--config.checkpoint_every_steps=100")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_hosts(workdir, flags_per_process, cache):
  address = f"127.0.0.1:{_free_port()}"
  procs = [runs.start_training(workdir, *FLAGS, *flags, f"--coordinator_address={address}",
                               "--num_processes=2", f"--process_id={i}", devices=1,
                               cache_dir=cache) for i, flags in enumerate(flags_per_process)]
  try:
    return [runs.finish(p) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def test_a_host_without_the_data_set_builds_its_own(tmp_path):
  data_dirs = [str(tmp_path / f"host{i}_tfds") for i in range(2)]
  finished = _two_hosts(str(tmp_path / "run"),
                        [[f"--config.data.data_dir={d}"] for d in data_dirs],
                        str(tmp_path / "xla_cache"))
  for rc, _, err in finished:
    assert rc == 0, err[-3000:]
  assert "Building the data set on this host" in finished[1][2]
  for d in data_dirs:  # each host's own copy, the same files
    assert os.path.isfile(os.path.join(d, "hypersim", "res32", VERSION, "dataset_info.json"))
  rmse = [re.search(r"Final validation RMSE: ([0-9.]+)", out).group(1) for _, out, _ in finished]
  assert len(set(rmse)) == 1, rmse


def test_a_host_that_cannot_get_the_data_set_stops_every_host_with_one_line(tmp_path):
  missing = str(tmp_path / "no_raw_frames")
  finished = _two_hosts(
      str(tmp_path / "run"),
      [[f"--config.data.data_dir={tmp_path / 'host0_tfds'}"],
       [f"--config.data.data_dir={tmp_path / 'host1_tfds'}",
        f"--config.data.manual_dir={missing}"]],
      str(tmp_path / "xla_cache"))
  lines = []
  for rc, _, err in finished:
    assert rc == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    lines.append(errors[0])
  assert lines[0].startswith("error: Another process could not open the data set")
  assert f"No raw HyperSim frames at {missing}" in lines[1]
