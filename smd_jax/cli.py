"""How the project's commands behave: absl flags, one-line errors, quiet library logs.

Every `python -m smd_jax.<command>` parses its flags with `parse_flags`, reports
a `errors.UserError` as one line `error: ...` with exit status 1
(`report_user_errors`), and keeps the INFO chatter of Orbax, grain and TFDS out
of its log (`quiet_library_logs`). `run_command` does all three.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Callable

from absl import logging

from smd_jax import cli
from smd_jax.errors import UserError


# Libraries whose INFO lines (dozens per checkpoint) drown the training log.
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/tensorflow_datasets/core/")


def quiet_library_logs() -> None:
  """Keeps warnings and errors from chatty libraries, drops their INFO lines."""
  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in _CHATTY_LIBRARIES)
  logging.get_absl_handler().addFilter(keep)


def report_user_errors(fn: Callable[[], int | None]) -> int:
  """Runs `fn`; a `UserError` becomes `error: <message>` on stderr and exit status 1."""
  try:
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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with one-line errors for bad flags and `--config` fields.

  Use as `app.run(main, flags_parser=errors.parse_flags)`.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    return flags.FLAGS(argv)
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


def run_command(run: Callable[..., int], define_flags: Callable[[], None]) -> None:
  """The `python -m` entry of a command: its flags, quiet library logs, one-line errors.

  `run(flag_values, positional_args)` returns the exit status.
  """
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top


  def main(argv):
    logging.set_verbosity(logging.INFO)
    cli.quiet_library_logs()
    sys.exit(run(flags.FLAGS, argv[1:]))

  define_flags()
  app.run(main, flags_parser=parse_flags)
