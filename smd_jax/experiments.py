"""Train and evaluate a list of configs, then tabulate them beside the paper's numbers.

    python -m smd_jax.experiments --out runs/paper configs/paper/unet_l1.py \\
        configs/paper/unet_1hot40.py [--preset demo] [--set num_train_steps=800] ...

Each config trains in `<out>/<config name>` with `trainer.train_and_evaluate` (the
same step and evaluation as `smd_jax.train`); a run whose final evaluation JSON
already exists is not trained again (delete it, or pass --retrain), so an
interrupted sweep resumes where it stopped. Runs on synthetic data share one data
set under `<out>/data`. The Markdown table (our numbers, and the paper's published
row for each config where there is one) goes to `<out>/results.md` and stdout.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import json
import os
import re
from typing import Sequence

from absl import app, flags, logging

from smd_jax import paper, summary, trainer

_OUT = flags.DEFINE_string("out", None, "Directory for the runs and results.md.")
_PRESET = flags.DEFINE_enum("preset", None, ["demo"],
                            "Small-scale setup applied to every config (configs/default.py).")
_SET = flags.DEFINE_multi_string("set", [], "Config override KEY=VALUE (dotted key), repeatable.")
_RETRAIN = flags.DEFINE_bool("retrain", False, "Train again even where results exist.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only tabulate existing results.")

# Extra metrics shown after the depth columns when a run has them.
EXTRA_COLUMNS = (("semantic/miou", "sem. mIoU"), ("semantic/pixel_accuracy", "sem. acc"),
                 ("contours/f1", "contour F1"), ("depth_edges/f1", "edge F1"))


def load_config(path: str):
  """`get_config()` of a config file, imported by path (configs import `configs.base`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config file {path!r}.")
  name = "_experiment_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_override(config, assignment: str) -> None:
  """KEY=VALUE with a dotted KEY; VALUE as a Python literal, else as a string."""
  key, sep, text = assignment.partition("=")
  if not sep:
    raise ValueError(f"Override {assignment!r} is not KEY=VALUE.")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise KeyError(f"Override {key!r}: no such config field.")
  node[leaf] = value


def prepare_config(path: str, out: str, preset: str | None, overrides: Sequence[str]):
  config = load_config(path)
  if preset == "demo":
    from configs import default  # pylint: disable=g-import-not-at-top
    default.demo_settings(config)
  for assignment in overrides:
    apply_override(config, assignment)
  if config.data.synthetic.enabled:  # one generated data set for the whole sweep
    config.data.data_dir = config.data.data_dir or os.path.join(out, "data", "tfds")
    config.data.manual_dir = config.data.manual_dir or os.path.join(out, "data", "raw")
  return config


def final_results(workdir: str, split: str = "validation") -> dict | None:
  """The last `eval_<split>_<step>.json` in a workdir, or None."""
  found = glob.glob(os.path.join(workdir, f"eval_{split}_*.json"))
  if not found:
    return None
  latest = max(found, key=lambda p: int(re.findall(r"(\d+)\.json$", p)[0]))
  with open(latest) as f:
    return json.load(f)


def _fmt(value) -> str:
  return "–" if value is None else f"{value:.3f}"


def markdown_table(results: dict[str, dict | None], configs: dict[str, object], *,
                   extra_columns=EXTRA_COLUMNS, published: bool = True) -> str:
  """One 'ours' row per config (and the paper's row below it where published).

  `extra_columns`: (result key, header) pairs shown after the paper's columns
  where some run has the key. `published=False` leaves the paper's rows out
  (they are validation-split numbers).
  """
  extras = [(k, h) for k, h in extra_columns
            if any(r and r.get(k) is not None for r in results.values())]
  header = ["config", "source", "steps"] + [h for _, h in paper.COLUMNS] + [h for _, h in extras]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, result in results.items():
    result = result or {}
    ours = [name, "ours", str(result.get("step", "–"))]
    ours += [_fmt(result.get(f"depth/{k}")) for k, _ in paper.COLUMNS]
    ours += [_fmt(result.get(k)) for k, _ in extras]
    lines.append("| " + " | ".join(ours) + " |")
    row = paper.PUBLISHED.get(configs[name].get("paper_row") or "") if published else None
    if row:
      published = ["", f"paper T{row.table} {row.name}", "15 ep."]
      published += [_fmt(getattr(row, k)) for k, _ in paper.COLUMNS] + [""] * len(extras)
      lines.append("| " + " | ".join(published) + " |")
  return "\n".join(lines) + "\n"


def prepare_configs(paths: Sequence[str], out: str, preset: str | None,
                    overrides: Sequence[str]) -> dict:
  """Config name -> prepared config, all parsed first: a typo fails before hours of training."""
  return {os.path.splitext(os.path.basename(p))[0]: prepare_config(p, out, preset, overrides)
          for p in paths}


def run(paths: Sequence[str], out: str, *, preset: str | None = None,
        overrides: Sequence[str] = (), retrain: bool = False,
        report_only: bool = False) -> str:
  """Trains what is missing, returns (and writes) the Markdown table."""
  configs = prepare_configs(paths, out, preset, overrides)
  results = {}
  for name, config in configs.items():
    workdir = os.path.join(out, name)
    results[name] = final_results(workdir)
    if report_only or (results[name] and not retrain):
      continue
    logging.info("Experiment %s -> %s", name, workdir)
    results[name] = trainer.train_and_evaluate(config, workdir)
  table = markdown_table(results, configs)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table)
  return table


def main(argv):
  if len(argv) < 2 or not _OUT.value:
    raise app.UsageError("Usage: python -m smd_jax.experiments --out DIR CONFIG.py [CONFIG.py ...]")
  logging.set_verbosity(logging.INFO)
  summary.quiet_library_logs()
  try:  # a bad path or override: one line, before anything is written
    prepare_configs(argv[1:], _OUT.value, _PRESET.value, _SET.value)
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise app.UsageError(str(e).strip('"')) from None
  print(run(argv[1:], _OUT.value, preset=_PRESET.value, overrides=_SET.value,
            retrain=_RETRAIN.value, report_only=_REPORT_ONLY.value))


if __name__ == "__main__":
  app.run(main)
