"""`python -m smd_jax.train` in a subprocess, with the toy encoder, for fault-tolerance tests.

    python tests/train_subprocess.py --config tests/toy_config.py --workdir W [train flags]

Environment (test hooks, both optional):
  SMD_TEST_SLOW_FROM_STEP=K  from train step K on, each step sleeps 0.3 s, so a test
                             can signal or kill the process while it trains;
  SMD_TEST_MARKER=PATH       written when step K starts;
  SMD_TEST_WAIT_FOR=PATH     step K then waits until PATH exists (a test holds the run);
  SMD_TEST_EVAL_MARKER=PATH  written when an evaluation starts, which then sleeps 600 s
                             (a test kills the process during the final evaluation).
"""

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app  # noqa: E402

from smd_jax import cli, train
from smd_jax.models import registry  # noqa: E402
from smd_jax.training import steps as steps_lib
from tests import collector  # noqa: E402
from tests.toy_models import ToyEncoder  # noqa: E402

registry.ENCODERS["toy"] = ToyEncoder
collector.collect_less()  # as in the test processes (tests/collector.py)


def _slowed(build_steps, slow_from: int, marker: str | None):
  def build(*args, **kwargs):
    steps, state = build_steps(*args, **kwargs)
    fast = steps.train_step

    def train_step(state, batch):
      step = int(state.step) + 1
      if step >= slow_from:
        if marker and not os.path.exists(marker):
          with open(marker, "w") as f:
            f.write(str(step))
          while os.environ.get("SMD_TEST_WAIT_FOR") and not os.path.exists(
              os.environ["SMD_TEST_WAIT_FOR"]):
            time.sleep(0.05)
        time.sleep(0.3)
      return fast(state, batch)

    return dataclasses.replace(steps, train_step=train_step), state
  return build


if __name__ == "__main__":
  if os.environ.get("SMD_TEST_SLOW_FROM_STEP"):
    steps_lib.build_steps = _slowed(steps_lib.build_steps,
                                    int(os.environ["SMD_TEST_SLOW_FROM_STEP"]),
                                    os.environ.get("SMD_TEST_MARKER"))
  if os.environ.get("SMD_TEST_EVAL_MARKER"):
    from smd_jax.evaluation import passes  # noqa: E402

    def _hanging_evaluate(*args, **kwargs):
      with open(os.environ["SMD_TEST_EVAL_MARKER"], "w") as f:
        f.write("evaluating")
      time.sleep(600)

    passes.evaluate = _hanging_evaluate
  app.run(train.main, flags_parser=cli.parse_flags)
