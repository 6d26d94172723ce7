"""Our side of the comparison: the jitted train and eval steps of smd_jax (steps.py).

The model is built from the same configs the trainer uses (configs/base.py, the
paper's setup), so what is timed is exactly the step that trains: semantic input
transform, model, losses, Adam update and metric sums, all inside one jit.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np
from flax import nnx

from configs import base
from smd_jax.training import data_parallel, steps as steps_lib


# Benchmark model name -> what it changes in the paper's base config.
MODELS = {
    "unet": lambda config: None,  # the baseline: UNet, depth head, L1
    "deeplabv3": base.use_deeplab,
    "unet_2head": base.add_semantic_head,  # + 40-class semantic head, CE, weight 0.07
}


def make_config(model: str, *, encoder: str, batch_size: int, size: int, precision: str):
  """The paper's base config for one benchmark model at the given shape and precision."""
  if model not in MODELS:
    raise ValueError(f"Unknown model {model!r}; known: {sorted(MODELS)}")
  config = base.get_config()
  MODELS[model](config)
  config.model.encoder = encoder
  config.model.dtype = {"f32": "float32", "bf16": "bfloat16"}[precision]
  config.batch_size = config.eval_batch_size = batch_size
  config.data.resolution = size
  return config


def random_batch(batch_size: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch as the input pipeline yields it: uint8 RGB, depth in metres with NaN
  holes, NYU40 labels with -1 unlabelled."""
  rng = np.random.default_rng(seed)
  depth = rng.uniform(0.5, 15.0, (batch_size, size, size)).astype(np.float32)
  depth[rng.random(depth.shape) < 0.05] = np.nan
  return {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
          "depth": depth,
          "semantic": rng.integers(-1, 41, (batch_size, size, size)).astype(np.int16)}


def prepare(model: str, *, encoder: str = "efficientnet_b4", batch_size: int, size: int,
            precision: str, train: bool = True, evaluate: bool = True
            ) -> tuple[dict, dict[str, Callable[[], object]]]:
  """Builds and compiles the train and eval steps: (the row so far, with compile times;
  {"train" / "eval": a function that runs one step and blocks until it is done}). The
  eval step sees the state that the train steps run so far have left."""
  config = make_config(model, encoder=encoder, batch_size=batch_size, size=size,
                       precision=precision)
  mesh = data_parallel.make_mesh()
  start = time.perf_counter()
  net = steps_lib.create_model(config, config.seed)
  result = {"side": "flax", "model": model, "encoder": encoder, "batch_size": batch_size,
            "size": size, "precision": precision, "model_build_s": time.perf_counter() - start,
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "params": sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))}
  steps, state = steps_lib.build_steps(config, net, total_steps=1000, mesh=mesh)
  host_batch = random_batch(batch_size, size)
  batch = data_parallel.to_global(host_batch, mesh)
  holder = [state]
  runs = {}
  if train:
    start = time.perf_counter()
    train_step = steps.train_step.lower(state, batch).compile()
    result["train_compile_s"] = time.perf_counter() - start

    def run_train():
      holder[0], metrics = train_step(holder[0], batch)
      jax.block_until_ready(metrics)

    runs["train"] = run_train
  if evaluate:
    eval_batch = data_parallel.to_global({**host_batch, "mask": np.ones(batch_size, bool)}, mesh)
    start = time.perf_counter()
    steps.eval_step.lower(state, eval_batch).compile()  # fills the cache the calls use
    result["eval_compile_s"] = time.perf_counter() - start
    runs["eval"] = lambda: jax.block_until_ready(steps.eval_step(holder[0], eval_batch))
  return result, runs
