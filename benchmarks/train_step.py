"""Times the jitted train step of a config on random data (no data set needed).

  python benchmarks/train_step.py --config configs/default.py --steps 10
  python benchmarks/train_step.py --config configs/base.py --config.model.dtype=bfloat16

Prints compile time, median step time, and images/s; --json appends a record.
"""

import json
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from smd_jax import cli
from smd_jax.training import data_parallel, steps as steps_lib


_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after warm-up.")
_JSON = flags.DEFINE_string("json", None, "Append the result as one JSON line to this file.")


def random_batch(batch_size: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
          "depth": rng.uniform(0.5, 15.0, (batch_size, size, size)).astype(np.float32),
          "semantic": rng.integers(-1, 41, (batch_size, size, size)).astype(np.int16)}


def main(argv):
  del argv
  config = _CONFIG.value
  mesh = data_parallel.make_mesh()
  t0 = time.perf_counter()
  model = steps_lib.create_model(config, config.seed)
  build_s = time.perf_counter() - t0
  steps, state = steps_lib.build_steps(config, model, total_steps=1000, mesh=mesh)
  batch = data_parallel.to_global(random_batch(config.batch_size, config.data.resolution), mesh)
  t0 = time.perf_counter()
  compiled = steps.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  record = {
      "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
      "backend": jax.default_backend(), "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "encoder": config.model.encoder,
      "resolution": config.data.resolution, "batch_size": config.batch_size,
      "dtype": config.model.dtype, "model_build_s": round(build_s, 2),
      "compile_s": round(compile_s, 2), "step_s_median": round(step_s, 4),
      "ms_per_image": round(1000 * step_s / config.batch_size, 2),
      "images_per_s": round(config.batch_size / step_s, 2),
  }
  print(json.dumps(record))
  if _JSON.value:
    with open(_JSON.value, "a") as f:
      f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  sys.path.insert(0, ".")  # configs/ imports `configs.base`
  app.run(main, flags_parser=cli.parse_flags)  # one-line errors for bad flags
