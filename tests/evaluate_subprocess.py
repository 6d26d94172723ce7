"""`python -m smd_jax.evaluate` in a subprocess, with the toy encoder (tests/toy_models.py).

    python tests/evaluate_subprocess.py --workdir W [evaluate flags]
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from smd_jax import cli, evaluate  # noqa: E402
from smd_jax.models import registry  # noqa: E402
from tests import collector  # noqa: E402
from tests.toy_models import ToyEncoder  # noqa: E402

registry.ENCODERS["toy"] = ToyEncoder
collector.collect_less()  # as in the test processes (tests/collector.py)

if __name__ == "__main__":
  cli.run_command(evaluate.run, evaluate.define_flags)
