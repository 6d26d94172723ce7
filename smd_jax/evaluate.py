"""Evaluate a trained run on a whole split; paper-style tables.

    python -m smd_jax.evaluate --workdir runs/x [--checkpoint latest|best|STEP]
        [--split validation|test] [--per_image] [--config CFG.py --config.x=y]
    python -m smd_jax.evaluate --compare runs/a runs/b runs/c [--split validation]

The first form restores a checkpoint of the workdir (its config.json unless
--config is given), evaluates it on the split and writes eval_<split>_<step>.json,
.md (the paper's columns, its published row, the depth breakdown), optionally a
per-image CSV, and images/eval_<split>_<step>_grid.png; the table is printed.
The second prints one table over several workdirs from their latest results
(evaluating those that have none). Library code: `smd_jax.evaluation.report`.
"""

from __future__ import annotations

import os
import sys

from smd_jax import huge_pages  # imports no jax

if __name__ == "__main__":  # first: only the re-executed process pays the imports below
  huge_pages.reexec_with_huge_pages()

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from smd_jax import cli, errors, validation  # noqa: E402
from smd_jax.evaluation import report  # noqa: E402
from smd_jax.inference import trained_run  # noqa: E402


def define_flags(flag_values=flags.FLAGS) -> None:
  """Registers this command's flags (done by `__main__` only, so importing defines none)."""
  config_flags.DEFINE_config_file("config", None, "Config file; default: <workdir>/config.json.",
                                  flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).",
                      flag_values=flag_values)
  flags.DEFINE_string("checkpoint", "latest", "latest, best (by config.best_metric, default "
                      "depth/rmse) or a step number.", flag_values=flag_values)
  flags.DEFINE_enum("split", "validation", ["validation", "test", "train"], "Split to evaluate.",
                    flag_values=flag_values)
  flags.DEFINE_integer("batch_size", None, "Global batch (default config.eval_batch_size); a "
                       "multiple of the device count.", flag_values=flag_values)
  flags.DEFINE_integer("max_examples", None, "Evaluate only the first N examples.",
                       flag_values=flag_values)
  flags.DEFINE_bool("per_image", False, "Also write per-image metrics as CSV (worst first).",
                    flag_values=flag_values)
  flags.DEFINE_integer("num_images", None, "Examples in the figure grid (default "
                       "config.num_images; 0: none).", flag_values=flag_values)
  flags.DEFINE_bool("compare", False, "Tabulate the workdirs given as arguments side by side.",
                    flag_values=flag_values)


def run(fv, args) -> int:
  """Runs the command for parsed flags `fv` and positional `args`; returns the exit status."""
  def command() -> int:
    if fv.compare:
      workdirs = ([fv.workdir] if fv.workdir else []) + list(args)
      if not workdirs:
        raise errors.UserError("--compare needs workdirs: --compare runs/a runs/b ...")
      for workdir in workdirs:  # all checked before any is evaluated
        validation.validate_config(
            trained_run.load_config(workdir), command="evaluate", workdir=workdir,
            num_devices=jax.device_count(), eval_batch_size=fv.batch_size,
            source=os.path.join(workdir, "config.json"))
      print(report.compare(workdirs, split=fv.split, batch_size=fv.batch_size,
                           max_examples=fv.max_examples, num_images=fv.num_images))
      return 0
    if args:
      raise errors.UserError(f"Unexpected arguments {' '.join(args)} (several workdirs: "
                             "--compare).")
    if not fv.workdir:
      raise errors.UserError("--workdir is required.")
    config = cli.config_value(fv["config"], sys.argv)
    validation.validate_config(
        trained_run.load_config(fv.workdir, config), command="evaluate", workdir=fv.workdir,
        num_devices=jax.device_count(), eval_batch_size=fv.batch_size,
        source="--config" if config is not None else os.path.join(fv.workdir, "config.json"))
    result = report.evaluate_workdir(
        fv.workdir, config=config, checkpoint=fv.checkpoint, split=fv.split,
        batch_size=fv.batch_size, max_examples=fv.max_examples, per_image=fv.per_image,
        num_images=fv.num_images, progress=True)
    print(result.table)
    for kind, path in result.paths.items():
      print(f"{kind}: {path}")
    return 0

  return cli.report_user_errors(command)


if __name__ == "__main__":
  cli.run_command(run, define_flags)
