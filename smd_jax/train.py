"""Train (and evaluate) one config: python -m smd_jax.train --config CFG --workdir DIR.

Thin command-line wrapper over `smd_jax.training.trainer.train_and_evaluate`. Any config
field can be overridden, e.g. --config.batch_size=16 --config.data.data_dir=/data.

Several processes (GPU nodes without a cluster manager): start the same command
on every host with --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I. On Cloud TPU pod slices add --jax_distributed; under SLURM
nothing is needed: JAX finds the other processes itself. See docs/scaling.md.

Exit status: 0 when training finished or was preempted (SIGTERM: the state is
saved at the next step and the same command resumes); 1 with a one-line
`error: ...` for bad input (no traceback, nothing in the workdir changed).
"""

import sys

from smd_jax import huge_pages  # imports no jax

if __name__ == "__main__":  # first: only the re-executed process pays the imports below
  huge_pages.reexec_with_huge_pages()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from smd_jax import cli, validation  # noqa: E402
from smd_jax.training import multihost, trainer  # noqa: E402


_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_JAX_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Start jax.distributed with JAX's cluster detection (Cloud TPU "
    "pod slices, k8s); automatic under SLURM and Open MPI.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> int:
  multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         auto=_JAX_DISTRIBUTED.value)
  # Every field and path checked before any data are made or anything is written.
  validation.validate_config(config, command="train", workdir=workdir,
                             num_devices=jax.device_count())
  results = trainer.train_and_evaluate(config, workdir)
  if results.get("preempted"):
    print(f"Preempted at step {results['step']}: checkpoint saved; run the same command to "
          "resume.")
  elif "depth/rmse" in results:
    print(f"Final validation RMSE: {results['depth/rmse']:.4f} m "
          f"(best constant depth {results['constant_baseline/depth']:.2f} m: "
          f"RMSE {results['constant_baseline/rmse']:.4f} m)")
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()
  sys.exit(cli.report_user_errors(
      lambda: run(cli.config_value(_CONFIG, sys.argv), _WORKDIR.value)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
