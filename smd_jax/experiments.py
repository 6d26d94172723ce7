"""Train and evaluate a list of configs, then tabulate them beside the paper's numbers.

    python -m smd_jax.experiments --out runs/paper configs/paper/unet_l1.py \\
        configs/paper/unet_1hot40.py [--preset demo] [--set num_train_steps=800] ...

Each config trains in `<out>/<config name>` with the same loop as
`smd_jax.train`; a run whose final evaluation JSON already exists is not trained
again (delete it, or pass --retrain), so an interrupted sweep resumes where it
stopped. The Markdown table (our numbers, and the paper's published row for each
config where there is one) goes to `<out>/results.md` and stdout. Library code:
`smd_jax.training.sweep`.
"""

from __future__ import annotations

from absl import app, flags, logging

from smd_jax import cli
from smd_jax.training import sweep

_OUT = flags.DEFINE_string("out", None, "Directory for the runs and results.md.")
_PRESET = flags.DEFINE_enum("preset", None, ["demo"],
                            "Small-scale setup applied to every config (configs/default.py).")
_SET = flags.DEFINE_multi_string("set", [], "Config override KEY=VALUE (dotted key), repeatable.")
_RETRAIN = flags.DEFINE_bool("retrain", False, "Train again even where results exist.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only tabulate existing results.")


def main(argv):
  if len(argv) < 2 or not _OUT.value:
    raise app.UsageError("Usage: python -m smd_jax.experiments --out DIR CONFIG.py [CONFIG.py ...]")
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()
  try:  # a bad path or override: one line, before anything is written
    sweep.prepare_configs(argv[1:], _OUT.value, _PRESET.value, _SET.value)
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise app.UsageError(str(e).strip('"')) from None
  print(sweep.run(argv[1:], _OUT.value, preset=_PRESET.value, overrides=_SET.value,
                  retrain=_RETRAIN.value, report_only=_REPORT_ONLY.value))


if __name__ == "__main__":
  app.run(main)
