"""How the project's commands behave: absl flags, one-line errors, quiet library logs.

One convention for every command of the project (`python -m smd_jax.<command>`,
`python -m smd_jax.convert`, `python -m tfds_hypersim.{build,download}`,
`python -m benchmarks.<name>`): absl flags with underscore names, parsed here, a
bad flag or a `errors.UserError` reported as one line `error: ...` with exit
status 1, and the INFO chatter of Orbax, grain and TFDS kept out of the log
(`quiet_library_logs`).

Two entry points:
- `run_command(run, define_flags)`: the `__main__` of a command on absl's global
  flags (`app.run`), for commands whose flags other code reads (config_flags).
- `run_argv(run, define_flags, argv, usage=__doc__)`: parses `argv` into fresh
  flag values and returns the exit status, so that the command can also be
  called in-process (`main(["--out", DIR])`) as often as wanted. Commands that
  had hyphenated argparse flags call `define_hyphen_aliases` (`--batch-size`
  and `--batch_size` both work) and name their list-valued flags in
  `multi_value`, which keeps argparse's `--models unet deeplabv3` working next
  to absl's repeated `--models=unet --models=deeplabv3`.
"""

from __future__ import annotations

import logging as std_logging
import sys
import types
from typing import Callable, Sequence

from absl import flags, logging

from smd_jax import env_flags
from smd_jax.errors import UserError


# Libraries whose INFO lines (dozens per checkpoint) drown the training log.
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/tensorflow_datasets/core/")


def quiet_library_logs() -> None:
  """Keeps warnings and errors from chatty libraries, drops their INFO lines."""
  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in _CHATTY_LIBRARIES)
  logging.get_absl_handler().addFilter(keep)
  # A restore of a damaged checkpoint (reported in one line by the trainer) leaves Orbax's
  # read tasks and coroutines with exceptions nobody awaits; asyncio and the interpreter
  # would print each with a traceback.
  std_logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  previous = sys.unraisablehook

  def unraisable(event) -> None:
    code = getattr(event.object, "cr_code", None)  # an Orbax coroutine closed unawaited
    tb, from_orbax = event.exc_traceback, "/orbax/" in getattr(code, "co_filename", "")
    while tb is not None:
      from_orbax = from_orbax or "/orbax/" in tb.tb_frame.f_code.co_filename
      tb = tb.tb_next
    if from_orbax:
      logging.debug("Orbax left an unawaited error: %s", event.exc_value)
    else:
      previous(event)
  sys.unraisablehook = unraisable


def report_user_errors(fn: Callable[[], int | None]) -> int:
  """Checks the SMD_* switches, then runs `fn`; a `UserError` becomes
  `error: <message>` on stderr and exit status 1."""
  try:
    env_flags.check_all()
    return fn() or 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


def _innermost_message(e: BaseException) -> str:
  """The message under ml_collections' wrapping (AttributeError(KeyError('...')))."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  return str(e.args[0]) if e.args else str(e)


def _exit(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


_CONFIG_ERRORS = (AttributeError, KeyError, OSError, TypeError, ValueError, SyntaxError,
                  ImportError)


def _config_error(e: BaseException, argv: list[str]) -> str:
  """One line for an error in loading a `--config` file or applying `--config.*` overrides."""
  if isinstance(e, AttributeError) and "has no attribute 'get_config'" in _innermost_message(e):
    return ("Cannot load the config: the file defines no get_config() (cut short?). --config "
            "takes a Python file with get_config(), e.g. configs/default.py.")
  if isinstance(e, (AttributeError, KeyError)):
    lines = _innermost_message(e).strip("'\" ").splitlines()
    field = lines[0].strip("'\"")
    given = ", ".join(a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config."))
    hint = f" {lines[-1].strip()}" if len(lines) > 1 else ""
    return (f"The config has no field {field!r} (overrides given: {given or 'none'}).{hint} "
            "Overrides must name fields of the config file, e.g. --config.data.resolution=64.")
  detail = [line.strip() for line in str(e).splitlines() if line.strip()]
  return (f"Cannot load the config: {detail[-1] if detail else type(e).__name__}. --config "
          "takes a Python file with get_config(), e.g. configs/default.py.")


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing with one-line errors for bad flags and `--config` fields.

  Returns `argv[0]` and the positional arguments. Use as
  `app.run(main, flags_parser=cli.parse_flags)`.
  """
  try:
    return flag_values(argv)
  except flags.Error as e:  # absl's own; a config file's error arrives with its traceback
    lines = [line for line in str(e).splitlines() if line.strip()]
    _exit(lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1].strip()}")
  except _CONFIG_ERRORS as e:
    _exit(_config_error(e, argv))
  return []  # not reached


def config_value(config_flag, argv: list[str]):
  """The value of a `config_flags` flag (loaded lazily), with one-line errors as above."""
  try:
    value = config_flag.value
    if value is not None:  # an optional --config that was not given
      value.to_dict  # pylint: disable=pointless-statement  # a file that failed to load raises here
    return value
  except _CONFIG_ERRORS as e:
    raise UserError(_config_error(e, argv)) from e


def run_command(run: Callable[..., int], define_flags: Callable[[], None],
                argv: Sequence[str] | None = None) -> None:
  """The `python -m` entry of a command: its flags, quiet library logs, one-line errors.

  `run(flag_values, positional_args)` returns the exit status; `argv` (with the
  program name) defaults to sys.argv.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  def main(parsed_argv):
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    sys.exit(run(flags.FLAGS, parsed_argv[1:]))

  define_flags()
  app.run(main, argv=None if argv is None else list(argv), flags_parser=parse_flags)


def define_hyphen_aliases(flag_values: flags.FlagValues) -> None:
  """Defines `--a-b` as an alias of every flag `--a_b` (the argparse spelling some commands had).

  Call it at the end of `define_flags`; both spellings then set the same flag,
  also `--no-a-b` for a boolean.
  """
  for name in list(flag_values):
    hyphenated = name.replace("_", "-")
    if hyphenated != name and hyphenated not in flag_values:
      flags.DEFINE_alias(hyphenated, name, flag_values=flag_values)


def expand_multi_values(argv: Sequence[str], names: Sequence[str]) -> list[str]:
  """argparse's `--name A B C` (nargs="+") as absl's repeated `--name=A --name=B --name=C`.

  For the flags in `names` (either spelling; a bare name without values is
  dropped, as argparse's nargs="*" gives no values). The values end at the next
  argument that starts with "-", as in argparse; `--name=A` stays as it is.
  """
  spellings = {f"--{n}" for name in names for n in (name, name.replace("_", "-"))}
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    i += 1
    if arg == "--":
      out.extend(argv[i - 1:])
      break
    if arg not in spellings:
      out.append(arg)
      continue
    values = []
    while i < len(argv) and not argv[i].startswith("-"):
      values.append(argv[i])
      i += 1
    out.extend(f"{arg}={v}" for v in values)
  return out


def _help_text(flag_values: flags.FlagValues, usage: str) -> str:
  """The usage lines and one line per flag (hyphen aliases next to the flag they stand for)."""
  lines = [usage.strip(), "", "flags:"]
  for name in sorted(flag_values):
    if "-" in name and name.replace("-", "_") in flag_values:
      continue  # a hyphen alias; shown with its flag
    flag = flag_values[name]
    alias = name.replace("_", "-")
    also = f" (also --{alias})" if alias != name and alias in flag_values else ""
    default = f" [default: {flag.default!r}]" if flag.default not in (None, [], False) else ""
    text = " ".join(flag.help.split()).replace(".;", ";")
    lines.append(f"  --{name}{also}: {text}{default}")
  return "\n".join(lines)


def parse_argv(define_flags: Callable[[flags.FlagValues], None], argv: Sequence[str] | None,
               *, usage: str, multi_value: Sequence[str] = (), positional: bool = True,
               prog: str = "command") -> tuple[flags.FlagValues, list[str]]:
  """Fresh flag values from `define_flags`, parsed from `argv` (no program name; None: sys.argv).

  Returns the flag values and the positional arguments. `-h`/`--help` prints
  `usage` and the flags and exits 0; a bad flag, or any positional argument
  where `positional` is False, exits 1 with one line `error: ...` (`parse_flags`).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  head = argv[:argv.index("--")] if "--" in argv else argv
  if "-h" in head or "--help" in head:
    print(_help_text(flag_values, usage))
    sys.exit(0)
  args = parse_flags([prog] + expand_multi_values(argv, multi_value), flag_values)[1:]
  if args and not positional:
    _exit(f"Unexpected arguments {' '.join(args)}: {prog} takes flags only (--help lists them).")
  return flag_values, args


def flag_namespace(flag_values: flags.FlagValues) -> types.SimpleNamespace:
  """The parsed values by flag name, hyphen aliases left out: `args.batch_size`."""
  return types.SimpleNamespace(**{name: flag_values[name].value for name in flag_values
                                  if "-" not in name})


def run_argv(run: Callable[[flags.FlagValues, list[str]], int | None],
             define_flags: Callable[[flags.FlagValues], None],
             argv: Sequence[str] | None = None, *, usage: str,
             multi_value: Sequence[str] = (), positional: bool = True,
             prog: str = "command") -> int:
  """Parses `argv` (`parse_argv`) and returns `run(flag_values, positional_args)`'s exit status.

  A `UserError` raised by `run` becomes `error: ...` and exit status 1
  (`report_user_errors`). Use as `main(argv=None)` of a command:
  `sys.exit(main())` under `if __name__ == "__main__"`.
  """
  flag_values, args = parse_argv(define_flags, argv, usage=usage, multi_value=multi_value,
                                 positional=positional, prog=prog)
  return report_user_errors(lambda: run(flag_values, args))
