"""smd_jax.cli: Orbax's unawaited errors stay out of stderr, everything else does not."""

import sys
import types

from smd_jax import cli


def _coroutine(filename: str):
  namespace = {}
  code = compile("async def read():\n  pass\n", filename, "exec")
  exec(code, namespace)  # pylint: disable=exec-used
  return namespace["read"]()


def test_unraisable_errors_of_orbax_coroutines_are_not_printed(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  cli.quiet_library_logs()
  orbax = _coroutine("/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
  other = _coroutine("/site-packages/mine/module.py")
  try:
    for obj in (orbax, other):
      sys.unraisablehook(types.SimpleNamespace(object=obj, exc_value=RuntimeError("x"),
                                               exc_traceback=None, exc_type=RuntimeError,
                                               err_msg=None))
  finally:
    orbax.close()
    other.close()
  assert [e.object for e in seen] == [other]
