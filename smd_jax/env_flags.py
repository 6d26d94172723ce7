"""On/off switches read from the environment (`SMD_...=1` / `0`), one rule for all of them."""

import os

from smd_jax.errors import UserError


def on_off(variable: str, default: bool) -> bool:
  """True for "1", False for "0", `default` when unset or empty.

  Anything else is an error, not the default: a typo such as "yes" or "off" would
  otherwise leave the switch silently where it was.
  """
  value = os.environ.get(variable, "")
  if value not in ("", "0", "1"):
    raise UserError(f"{variable} must be 1 (on) or 0 (off), or unset; got {value!r}.")
  return default if value == "" else value == "1"
