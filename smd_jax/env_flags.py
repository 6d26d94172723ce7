"""On/off switches read from the environment (`SMD_...=1` / `0`), one rule for all of them."""

import os

from smd_jax.errors import UserError

# Every switch of the project (README's table; each is read where it is used). The
# commands check them all first (`check_all`), so that a typo stops a command before
# it starts work rather than when, minutes later, the code that reads it runs.
SWITCHES = (
    "SMD_DEPTHWISE_VJP", "SMD_KXK_DOTS", "SMD_SINGLE_OUTPUT_CONV", "SMD_SUBPIXEL_UPSAMPLE",
    "SMD_POOLING_DOT", "SMD_CPU_FORWARD_OPTIONS", "SMD_CPU_ONEDNN_DOTS", "SMD_CPU_WIDE_VECTORS",
    "SMD_SPLIT_FORWARD", "SMD_COMPILE_AHEAD", "SMD_KEEP_FREED_MEMORY", "SMD_HUGE_PAGES",
)


def on_off(variable: str, default: bool) -> bool:
  """True for "1", False for "0", `default` when unset or empty.

  Anything else is an error, not the default: a typo such as "yes" or "off" would
  otherwise leave the switch silently where it was.
  """
  value = os.environ.get(variable, "")
  if value not in ("", "0", "1"):
    raise UserError(f"{variable} must be 1 (on) or 0 (off), or unset; got {value!r}.")
  return default if value == "" else value == "1"


def check_all() -> None:
  """Raises `UserError` for the first of `SWITCHES` set to anything but 1, 0 or nothing."""
  for variable in SWITCHES:
    on_off(variable, False)
