"""Train-step time on 1, 2, 4, 8 simulated CPU devices at a fixed global batch.

    python -m benchmarks.device_scaling [--config configs/default.py] [--devices 1,2,4,8]
        [--steps 5] [--batch 8] [--size 64]

On one CPU, more simulated devices split the same work into more, smaller
programs that share the same cores: this measures the overhead of the sharded
step (partitioning, collectives, per-device dispatch), not a speed-up. Each
device count runs in its own process (the device count is fixed when JAX
starts). Prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from absl import flags

from smd_jax import cli

_CHILD = r"""
import json, statistics, sys, time
import numpy as np

import importlib.util

from smd_jax.training import data_parallel, steps as steps_lib
spec = importlib.util.spec_from_file_location("cfg", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
config = module.get_config()
batch, size, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config.batch_size = batch
mesh = data_parallel.make_mesh()
step_fns, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0), 1000, mesh)
rng = np.random.default_rng(0)
data = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "depth": rng.uniform(0.5, 14.0, (batch, size, size)).astype(np.float32),
        "semantic": rng.integers(-1, 41, (batch, size, size)).astype(np.int16)}
t = time.perf_counter()
state, m = step_fns.train_step(state, data_parallel.to_global(data, mesh)); m["loss"].block_until_ready()
compile_s = time.perf_counter() - t
times = []
for _ in range(steps):
  t = time.perf_counter()
  state, m = step_fns.train_step(state, data_parallel.to_global(data, mesh)); m["loss"].block_until_ready()
  times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"devices": mesh.devices.size, "compile_s": compile_s,
                              "step_s": statistics.median(times)}))
"""


def measure(config: str, devices: int, batch: int, size: int, steps: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _CHILD, config, str(batch), str(size), str(steps)],
                       env=env, cwd=root, capture_output=True, text=True, check=False)
  for line in out.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{devices} devices failed:\n{out.stderr[-3000:]}")


def define_flags(flag_values: flags.FlagValues) -> None:
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("config", "configs/default.py", "Config file (get_config()).", **fv)
  flags.DEFINE_string("devices", "1,2,4,8", "Simulated CPU device counts, comma-separated.",
                      **fv)
  flags.DEFINE_integer("steps", 5, "Timed steps per device count.", **fv)
  flags.DEFINE_integer("batch", 8, "Global batch size.", **fv)
  flags.DEFINE_integer("size", 64, "Input height = width.", **fv)


def parse_args(argv: Sequence[str] | None = None):
  """The flags of `argv` (without the program name; None: sys.argv); exits 1 on a bad one."""
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__, positional=False,
                                  prog="python -m benchmarks.device_scaling")
  return cli.flag_namespace(flag_values)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  rows = []
  for n in (int(d) for d in args.devices.split(",")):
    r = measure(args.config, n, args.batch, args.size, args.steps)
    rows.append(r)
    print(f"{n} device(s): compile {r['compile_s']:.1f} s, step {r['step_s']:.3f} s", flush=True)
  base = rows[0]["step_s"]
  print(f"\n| devices | global batch | per device | compile (s) | step (s) | vs {rows[0]['devices']} |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: |")
  for r in rows:
    print(f"| {r['devices']} | {args.batch} | {args.batch // r['devices']} | {r['compile_s']:.1f} "
          f"| {r['step_s']:.3f} | {r['step_s'] / base:.2f}x |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
