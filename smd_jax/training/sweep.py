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
import traceback
from typing import Sequence

from absl import flags, logging
from ml_collections import config_flags

from smd_jax import errors, output_files, validation
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


def config_name(path: str) -> str:
  """A config's name in the sweep: its file name without `.py` (also its workdir's name)."""
  return os.path.splitext(os.path.basename(path))[0]


# What a config file, an override or validation can raise for a config that cannot run.
_CONFIG_ERRORS = (errors.UserError, OSError, KeyError, ValueError, TypeError, AttributeError,
                  SyntaxError, ImportError)


def _error_text(e: BaseException) -> str:
  if isinstance(e, (errors.UserError, FileNotFoundError, ValueError)):
    return str(e)
  if isinstance(e, KeyError) and e.args:  # str() would quote the message
    return str(e.args[0])
  return f"{type(e).__name__}: {e}"  # e.g. a SyntaxError in the config file


def prepare_configs(paths: Sequence[str], out: str, preset: str | None,
                    overrides: Sequence[str], config_args: Sequence[str] = ()) -> dict:
  """Config name -> prepared config, all parsed and validated first (`validation`).

  Every config is checked before any trains, and the problems of all of them are
  one `UserError` (the same message for several configs is given once, with their
  paths), so a typo in the fifth config fails before hours of training the first
  four, and the user fixes everything in one go.
  """
  import jax  # pylint: disable=g-import-not-at-top
  problems: dict[str, list[str]] = {}  # message -> config paths
  names = [config_name(p) for p in paths]
  for name in sorted({n for n in names if names.count(n) > 1}):
    clash = [p for p, n in zip(paths, names) if n == name]
    problems.setdefault(f"Configs named {name!r} would share the workdir "
                        f"{os.path.join(out, name)}; rename one.", []).extend(clash)
  configs = {}
  for name, path in zip(names, paths):
    try:
      config = prepare_config(path, out, preset, overrides, config_args)
      validation.validate_config(config, command="experiments", workdir=os.path.join(out, name),
                                 num_devices=jax.device_count())
    except _CONFIG_ERRORS as e:
      problems.setdefault(_error_text(e), []).append(path)
    else:
      configs[name] = config
  if problems:
    raise errors.UserError(" Also: ".join(_with_paths(m, w) for m, w in problems.items()))
  return configs


def _with_paths(message: str, paths: Sequence[str]) -> str:
  if len(paths) == 1 and paths[0] in message:  # e.g. "No config file 'x.py'."
    return message
  return f"{message} [{', '.join(paths)}]"


def run(paths: Sequence[str], out: str, *, preset: str | None = None,
        overrides: Sequence[str] = (), config_args: Sequence[str] = (), retrain: bool = False,
        report_only: bool = False) -> str:
  """Trains what is missing, returns (and writes) the Markdown table.

  `overrides` are `--set` KEY=VALUE strings, `config_args` `--config.KEY=VALUE`
  arguments; both apply to every config (`prepare_config`).
  """
  configs = prepare_configs(paths, out, preset, overrides, config_args)
  results, failed = {}, {}
  for name, config in configs.items():
    workdir = os.path.join(out, name)
    results[name] = report.final_results(workdir)
    if report_only or (results[name] and not retrain):
      continue
    logging.info("Experiment %s -> %s", name, workdir)
    try:
      results[name] = trainer.train_and_evaluate(config, workdir)
    except Exception as e:  # pylint: disable=broad-except
      # One run's crash (a bad data path, out of memory, a bug) must not cost the
      # others of a long sweep: its traceback is kept, the sweep goes on, and the
      # command fails at the end naming it. Ctrl-C still stops everything.
      logging.exception("Experiment %s failed; going on with the others.", name)
      failed[name] = _record_failure(workdir, e)
    else:
      _clear_failure(workdir)
  table = tables.markdown_table(results, configs)
  if failed:
    table += "\nFailed runs (traceback in `<workdir>/" + FAILURE_FILE + "`):\n\n" + "".join(
        f"- {name}: {message}\n" for name, message in failed.items())
  output_files.write_text(os.path.join(out, "results.md"), table)
  if failed:
    raise errors.UserError(
        f"{len(failed)} of {len(configs)} runs failed: " + "; ".join(
            f"{name} ({message}; see {os.path.join(out, name, FAILURE_FILE)})"
            for name, message in failed.items())
        + f". The others' table is in {os.path.join(out, 'results.md')}; run the same command "
        "again to retry the failed runs (finished runs are not trained again).")
  return table


FAILURE_FILE = "failed.txt"


def _record_failure(workdir: str, e: BaseException) -> str:
  """Writes the traceback of `e` to `<workdir>/failed.txt`; returns its one-line summary."""
  summary = (_error_text(e).strip().splitlines() or [type(e).__name__])[0]
  os.makedirs(workdir, exist_ok=True)
  output_files.write_text(os.path.join(workdir, FAILURE_FILE),
                          "".join(traceback.format_exception(e)))
  return summary


def _clear_failure(workdir: str) -> None:
  """Removes an earlier attempt's failed.txt once the run has succeeded."""
  path = os.path.join(workdir, FAILURE_FILE)
  if os.path.exists(path):
    os.remove(path)
