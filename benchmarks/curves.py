"""Compare the logged curves of two training runs (e.g. float32 vs bfloat16).

    python -m benchmarks.curves runs/f32 runs/bf16 [--keys train/loss val/depth/rmse]

Reads each workdir's metrics.jsonl and prints a Markdown table: one row per logged
step, one column per run and key, and the difference. `--keys` takes several values
(or is repeated: --keys=train/loss --keys=val/depth/rmse).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from smd_jax import cli
from smd_jax.errors import UserError


def read_metrics(workdir: str) -> dict[int, dict]:
  """step -> merged records of that step (train and eval lines share a step)."""
  out: dict[int, dict] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out.setdefault(int(record["step"]), {}).update(record)
  return out


def table(runs: dict[str, dict[int, dict]], keys: list[str]) -> str:
  names = list(runs)
  header = ["step"] + [f"{k} {n}" for k in keys for n in names] + (
      [f"{k} diff" for k in keys] if len(names) == 2 else [])
  lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
  steps = sorted(set().union(*runs.values()))
  for step in steps:
    cells = [str(step)]
    values = {k: [runs[n].get(step, {}).get(k) for n in names] for k in keys}
    if not any(v is not None for vs in values.values() for v in vs):
      continue
    for k in keys:
      cells += ["–" if v is None else f"{v:.4f}" for v in values[k]]
    if len(names) == 2:
      for k in keys:
        a, b = values[k]
        cells.append("–" if a is None or b is None else f"{b - a:+.4f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_multi_string("keys", ["train/loss", "train/depth/rmse"],
                            "Metrics to compare.", flag_values=flag_values)


def run(flag_values: flags.FlagValues, workdirs: list[str]) -> int:
  """Prints the table of the workdirs given as positional arguments."""
  if not workdirs:
    raise UserError("Name the workdirs to compare: python -m benchmarks.curves runs/a runs/b.")
  runs = {os.path.basename(os.path.normpath(w)): read_metrics(w) for w in workdirs}
  print(table(runs, flag_values.keys))
  return 0


def main(argv=None) -> int:
  return cli.run_argv(run, define_flags, argv, usage=__doc__, multi_value=("keys",),
                      prog="python -m benchmarks.curves")


if __name__ == "__main__":
  sys.exit(main())
