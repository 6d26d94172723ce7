"""Train and evaluate a list of configs, then tabulate them beside the paper's numbers.

    python -m smd_jax.experiments --out runs/paper configs/paper/unet_l1.py \\
        configs/paper/unet_1hot40.py [--preset demo] [--config.num_train_steps=800] ...

Each config trains in `<out>/<config name>` with the same loop as
`smd_jax.train`; a run whose final evaluation JSON already exists is not trained
again (delete it, or pass --retrain), so an interrupted sweep resumes where it
stopped. The Markdown table (our numbers, and the paper's published row for each
config where there is one) goes to `<out>/results.md` and stdout. Library code:
`smd_jax.training.sweep`.

Overrides apply to every config of the sweep, after --preset:
`--config.KEY=VALUE` (dotted KEY, VALUE parsed by the type of the field, as
`smd_jax.train --config.KEY=VALUE` does; `--config.KEY` / `--noconfig.KEY` for a
boolean), and `--set KEY=VALUE`, the older spelling (VALUE read as a Python
literal, else as a string), applied before them. Every config is loaded and checked
before any trains: bad paths, overrides and values, of all the configs at once, are
one line `error: ...` with exit status 1, before anything is written. A run that
fails while training (its traceback goes to `<out>/<config name>/failed.txt`) does not
stop the others; the table is written, and the command then exits with status 1 naming
the failed runs (run it again to retry them).
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Sequence

from smd_jax import huge_pages  # imports no jax

if __name__ == "__main__":  # first: only the re-executed process pays the imports below
  huge_pages.reexec_with_huge_pages()

from absl import flags  # noqa: E402

from smd_jax import cli, errors  # noqa: E402
from smd_jax.training import sweep  # noqa: E402

_CONFIG_OVERRIDE = re.compile(r"^--?(no)?config\.")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers this command's flags (done by `__main__` only, so importing defines none)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Directory for the runs and results.md.", **fv)
  flags.DEFINE_enum("preset", None, ["demo"],
                    "Small-scale setup applied to every config (configs/default.py).", **fv)
  flags.DEFINE_multi_string("set", [], "Config override KEY=VALUE (dotted key), repeatable; "
                            "the older spelling of --config.KEY=VALUE.", **fv)
  flags.DEFINE_bool("retrain", False, "Train again even where results exist.", **fv)
  flags.DEFINE_bool("report_only", False, "Only tabulate existing results.", **fv)


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """`argv` without its `--config.KEY...` overrides, and those overrides as `--config.KEY=VALUE`.

  absl knows no `--config.*` flags here (there is no single --config file), so they
  are taken out before parsing. `--config.KEY VALUE` becomes `--config.KEY=VALUE`
  unless the next argument starts with "-" or is a config file (`*.py`): then the
  override is a boolean one, as `--config.KEY` / `--noconfig.KEY`.
  """
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    i += 1
    if arg == "--":
      rest.extend(argv[i - 1:])
      break
    if not _CONFIG_OVERRIDE.match(arg):
      rest.append(arg)
      continue
    follows = argv[i] if i < len(argv) else "-"
    if "=" in arg or follows.startswith("-") or re.search(r"\.py(:|$)", follows):
      overrides.append(arg)
    else:
      overrides.append(f"{arg}={follows}")
      i += 1
  return rest, overrides


def run(flag_values: flags.FlagValues, paths: Sequence[str], config_args: Sequence[str]) -> int:
  """Runs the sweep over the config files `paths`; returns the exit status."""
  def command() -> int:
    if not paths or not flag_values.out:
      raise errors.UserError("Usage: python -m smd_jax.experiments --out DIR CONFIG.py "
                             "[CONFIG.py ...] [--config.KEY=VALUE ...]")
    print(sweep.run(paths, flag_values.out, preset=flag_values.preset,
                    overrides=flag_values.set, config_args=config_args,
                    retrain=flag_values.retrain, report_only=flag_values.report_only))
    return 0

  return cli.report_user_errors(command)


def main(argv: Sequence[str] | None = None) -> None:
  """`python -m smd_jax.experiments`: absl flags, plus `--config.*` overrides for every config."""
  rest, config_args = split_config_overrides(sys.argv if argv is None else argv)
  cli.run_command(functools.partial(run, config_args=config_args), define_flags, argv=rest)


if __name__ == "__main__":
  main()
