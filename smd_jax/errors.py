"""Errors in what the user asked for."""


class UserError(Exception):
  """An error in what the user asked for (a path, a config value, a flag), reported as one line.

  Its message says what is wrong and what to do; command-line tools print it
  without a traceback (`report_user_errors`).
  """
