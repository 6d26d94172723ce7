"""Depth for plain photos (PNG/JPEG, any size) with a trained run.

    python -m smd_jax.predict --workdir runs/x --input photo.jpg|photos/ --out out/
        [--checkpoint latest|best|STEP] [--npy] [--batch_size N]
        [--semantic labels/ | --semantic_workdir runs/2head]

Writes <stem>_depth.png (16-bit millimetres), <stem>_depth_color.png and with
--npy <stem>_depth.npy (metres), each at the photo's own size; models with a
semantic head also write <stem>_semantic.png (NYU40 ids) and a coloured copy.
A model trained with a semantic input needs --semantic (label maps named like
the photos: PNG ids 1..40, 0 = unlabelled) or --semantic_workdir (a run with a
semantic head, e.g. a 2-head model, whose prediction is fed in: two-stage).
How photos are resized and mapped back: `smd_jax.inference.predict_lib`.
"""

from __future__ import annotations

import os

from smd_jax import huge_pages  # imports no jax

if __name__ == "__main__":  # first: only the re-executed process pays the imports below
  huge_pages.reexec_with_huge_pages()

from absl import flags  # noqa: E402

from smd_jax import cli, errors, validation  # noqa: E402
from smd_jax.inference import predict_lib, trained_run  # noqa: E402


def define_flags(flag_values=flags.FLAGS) -> None:
  """Registers this command's flags (done by `__main__` only, so importing defines none)."""
  flags.DEFINE_string("workdir", None, "The run to predict with (config.json, checkpoints/).",
                      flag_values=flag_values)
  flags.DEFINE_string("input", None, "A PNG/JPEG file or a folder of them.",
                      flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output folder.", flag_values=flag_values)
  flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.",
                      flag_values=flag_values)
  flags.DEFINE_string("semantic", None, "Label map (PNG/NPY) or folder of them, named like the "
                      "images, for models with a semantic input.", flag_values=flag_values)
  flags.DEFINE_string("semantic_workdir", None, "Run with a semantic head whose predicted "
                      "labels feed the model's semantic input (two-stage).",
                      flag_values=flag_values)
  flags.DEFINE_string("semantic_checkpoint", "latest", "Checkpoint of --semantic_workdir.",
                      flag_values=flag_values)
  flags.DEFINE_integer("batch_size", None, "Images per step (default config.eval_batch_size).",
                       flag_values=flag_values)
  flags.DEFINE_bool("npy", False, "Also write float32 depth in metres as .npy.",
                    flag_values=flag_values)


def run(fv, args) -> int:
  """Runs the command for parsed flags `fv` and positional `args`; returns the exit status."""
  def command() -> int:
    if args:
      raise errors.UserError(f"Unexpected arguments: {' '.join(args)}.")
    missing = [f"--{name}" for name in ("workdir", "input", "out") if not fv[name].value]
    if missing:
      raise errors.UserError(f"{', '.join(missing)} required.")
    for workdir in filter(None, (fv.workdir, fv.semantic_workdir)):  # before any output
      validation.validate_config(trained_run.load_config(workdir), command="predict",
                                 workdir=workdir, source=os.path.join(workdir, "config.json"))
    written = predict_lib.predict_files(
        fv.workdir, fv.input, fv.out, checkpoint=fv.checkpoint, semantic=fv.semantic,
        semantic_workdir=fv.semantic_workdir, semantic_checkpoint=fv.semantic_checkpoint,
        batch_size=fv.batch_size, write_npy=fv.npy, progress=True)
    print(f"Wrote depth for {len(written)} image(s) to {fv.out}.")
    return 0

  return cli.report_user_errors(command)


if __name__ == "__main__":
  cli.run_command(run, define_flags)
