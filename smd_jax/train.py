"""Train (and evaluate) one config: python -m smd_jax.train --config CFG --workdir DIR.

Thin command-line wrapper over `smd_jax.trainer.train_and_evaluate`. Any config
field can be overridden, e.g. --config.batch_size=16 --config.data.data_dir=/data.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from smd_jax import summary, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  summary.quiet_library_logs()
  results = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "depth/rmse" in results:
    print(f"Final validation RMSE: {results['depth/rmse']:.4f} m "
          f"(best constant depth {results['constant_baseline/depth']:.2f} m: "
          f"RMSE {results['constant_baseline/rmse']:.4f} m)")


if __name__ == "__main__":
  app.run(main)
