"""Converted published weights as a run's workdir, for `smd_jax.evaluate` / `smd_jax.predict`.

    # 1. the authors' checkpoint -> our layout (whole model)
    python -m smd_jax.convert --from semantic_md unet_2head.pth --out converted/unet_2head
    # 2. -> a workdir with config.json (the paper row) and checkpoint 0 holding those weights
    python -m smd_jax.convert.workdir converted/unet_2head \\
        --config configs/paper/unet_2head.py --workdir runs/published_unet_2head
    # 3. no training: evaluate (paper-style table next to the published row) or predict
    python -m smd_jax.evaluate --workdir runs/published_unet_2head --split validation

The config must build exactly the model the weights describe (the paper row of the
reference class, `tests/test_semantic_md_models.py`): every Param and BatchNorm
statistic is taken from the weights, none is left as initialised, else one
``error: ...`` line names what does not fit. The optimizer state of checkpoint 0 is
fresh, so the workdir could also be trained on from there.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags

from smd_jax import cli
from smd_jax.convert import converters
from smd_jax.convert.core import ConversionError
from smd_jax.errors import UserError

STEP = 0


def write_workdir(converted: str, config: Any, workdir: str) -> str:
  """Writes ``workdir/config.json`` (``config`` with ``init_from`` = ``converted``) and
  checkpoint `STEP` whose parameters and statistics are all those of the converted
  whole-model directory ``converted``. Returns the absolute workdir."""
  from smd_jax.training import (checkpoints, data_parallel, steps as steps_lib,  # pylint: disable=g-import-not-at-top
                                trainer)
  workdir = os.path.abspath(workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir):
    raise UserError(f"{workdir} already has checkpoints; pass a new --workdir.")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init_from = os.path.abspath(converted)
  model = trainer.build_model(config)
  try:
    report = converters.load_pretrained(model, converted, encoder=config.model.get("encoder"))
  except (ConversionError, FileNotFoundError, ValueError) as e:
    raise UserError(f"{converted} does not fit the config's model: "
                    f"{str(e).splitlines()[0]}") from e
  if report.kept or report.widened is not None:
    what = report.kept[:3] if report.kept else [report.widened]
    raise UserError(f"{converted} does not cover the whole model of the config (e.g. "
                    f"{', '.join('.'.join(map(str, p)) for p in what)}): convert a whole "
                    "model (--from semantic_md / smp) and pass its paper row's config.")
  steps, state = steps_lib.build_steps(config, model, 1, data_parallel.make_mesh())
  del steps
  os.makedirs(workdir, exist_ok=True)
  trainer.write_config(config, workdir)
  ckpt = checkpoints.Checkpointer(workdir, async_save=False)
  try:
    ckpt.save(STEP, state, force=True)
    ckpt.wait()
  finally:
    ckpt.close()
  return workdir


def define_flags(flag_values: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file("config", None, "The paper row's config file.",
                                  flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "The workdir to write (new).", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def run(flag_values: flags.FlagValues, args: Sequence[str]) -> int:
  if len(args) != 1:
    raise UserError("Pass one converted directory (python -m smd_jax.convert ... --out DIR).")
  workdir = write_workdir(args[0], flag_values["config"].value, flag_values.workdir)
  print(f"{workdir}: config.json and checkpoint {STEP} from {os.path.abspath(args[0])}; "
        f"evaluate with: python -m smd_jax.evaluate --workdir {workdir}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run_argv(run, define_flags, argv, usage=__doc__,
                      prog="python -m smd_jax.convert.workdir")


if __name__ == "__main__":
  sys.exit(main())
