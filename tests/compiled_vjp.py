"""A function's value and its vector-Jacobian products, as one compiled program.

`jax.vjp` outside `jax.jit` runs the backward pass operation by operation, and each
operation compiles a program of its own on first use (a 5x5 depthwise conv's backward:
~60 programs per test case). One jitted program is what the model's steps run (the
convolutions' gradients inside a compiled train step), and it compiles once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax


def value_and_vjp(f: Callable[..., Any], ct: Any, *args: Any) -> tuple[Any, ...]:
  """(f(*args), *vjp(ct)): the value and the cotangent `ct` pulled back to each argument."""

  def both(ct, *args):
    value, vjp = jax.vjp(f, *args)
    return (value, *vjp(ct))

  return jax.jit(both)(ct, *args)
