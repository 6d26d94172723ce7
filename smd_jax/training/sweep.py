"""Train and evaluate a list of configs, then tabulate them beside the paper's numbers.

The library of `python -m smd_jax.experiments`. Each config trains in
`<out>/<config name>` with `trainer.train_and_evaluate`; a run whose final
evaluation JSON already exists is not trained again (unless `retrain`), so an
interrupted sweep resumes where it stopped. Runs on synthetic data share one data
set under `<out>/data`. The Markdown table goes to `<out>/results.md`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from typing import Sequence

from absl import flags, logging
from ml_collections import config_flags

from smd_jax import output_files, validation
from smd_jax.evaluation import report, tables
from smd_jax.training import trainer


def load_config_file(path: str):
  """`get_config()` of a config file, imported by path (configs import `configs.base`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config file {path!r}.")
  name = "_experiment_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_override(config, assignment: str) -> None:
  """`--set KEY=VALUE` with a dotted KEY; VALUE as a Python literal, else as a string."""
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


def apply_config_flags(config, args: Sequence[str]) -> None:
  """Applies `--config.KEY=VALUE` overrides to `config` in place, with ml_collections' config_flags.

  VALUE is parsed by the type of the field, exactly as `smd_jax.train
  --config.KEY=VALUE` does (`--config.KEY` / `--noconfig.KEY` for a boolean).
  Raises KeyError for a field the config lacks and ValueError for a bad value
  or an argument that is not such an override.
  """
  if not args:
    return
  argv = ["sweep"] + list(args)
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv,
                                    lock_config=False)
    rest = flag_values(argv)
  except flags.Error as e:
    raise ValueError(f"Bad override: {str(e).splitlines()[0]} (--config.KEY=VALUE).") from None
  except (AttributeError, KeyError) as e:  # an unknown field, wrapped by config_dict
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    lines = str(e.args[0] if e.args else e).strip("'\"").splitlines()
    hint = f" {lines[-1].strip()}" if len(lines) > 1 else ""
    raise KeyError(f"Override --config.{lines[0].strip(chr(39))}: no such config "
                   f"field.{hint}") from None
  if rest[1:]:
    raise ValueError(f"Not a --config.KEY=VALUE override: {' '.join(rest[1:])}.")


def prepare_config(path: str, out: str, preset: str | None, overrides: Sequence[str],
                   config_args: Sequence[str] = ()):
  """The config of file `path` with, in this order, the preset, `--set` overrides
  (`apply_override`) and `--config.KEY=VALUE` overrides (`apply_config_flags`)."""
  config = load_config_file(path)
  if preset == "demo":
    from configs import default  # pylint: disable=g-import-not-at-top
    default.demo_settings(config)
  for assignment in overrides:
    apply_override(config, assignment)
  apply_config_flags(config, config_args)
  if config.data.synthetic.enabled:  # one generated data set for the whole sweep
    config.data.data_dir = config.data.data_dir or os.path.join(out, "data", "tfds")
    config.data.manual_dir = config.data.manual_dir or os.path.join(out, "data", "raw")
  return config


def prepare_configs(paths: Sequence[str], out: str, preset: str | None,
                    overrides: Sequence[str], config_args: Sequence[str] = ()) -> dict:
  """Config name -> prepared config, all parsed and validated first (`validation`): a typo
  fails before hours of training, as one `UserError`."""
  import jax  # pylint: disable=g-import-not-at-top
  configs = {os.path.splitext(os.path.basename(p))[0]:
             prepare_config(p, out, preset, overrides, config_args) for p in paths}
  for (name, config), path in zip(configs.items(), paths):
    validation.validate_config(config, command="experiments", workdir=os.path.join(out, name),
                               num_devices=jax.device_count(), source=path)
  return configs


def run(paths: Sequence[str], out: str, *, preset: str | None = None,
        overrides: Sequence[str] = (), config_args: Sequence[str] = (), retrain: bool = False,
        report_only: bool = False) -> str:
  """Trains what is missing, returns (and writes) the Markdown table.

  `overrides` are `--set` KEY=VALUE strings, `config_args` `--config.KEY=VALUE`
  arguments; both apply to every config (`prepare_config`).
  """
  configs = prepare_configs(paths, out, preset, overrides, config_args)
  results = {}
  for name, config in configs.items():
    workdir = os.path.join(out, name)
    results[name] = report.final_results(workdir)
    if report_only or (results[name] and not retrain):
      continue
    logging.info("Experiment %s -> %s", name, workdir)
    results[name] = trainer.train_and_evaluate(config, workdir)
  table = tables.markdown_table(results, configs)
  output_files.write_text(os.path.join(out, "results.md"), table)
  return table
