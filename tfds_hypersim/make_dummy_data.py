"""Regenerates `tfds_hypersim/dummy_data/`, the builder's tiny test manual_dir.

  python -m tfds_hypersim.make_dummy_data [--out DIR]

Contents: procedural frames from `synthetic.generate` (radiance rounded to
1/64 and gzip level 9 to keep it ~1.5 MB): 2 good train frames, 1 validation,
1 test, plus two deliberately broken train frames that the builder must skip:
one with a truncated color file (-> corrupt_hdf5) and one whose semantic file
is missing (-> missing_file). `broken_frames.json` lists them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import flags

from smd_jax import cli
from tfds_hypersim import processing, synthetic

SEED = 1
NUM_FRAMES = {"train": 4, "validation": 1, "test": 1}
BROKEN = "broken_frames.json"


def default_dir() -> str:
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_data")


def make_dummy_data(out_dir: str) -> dict[str, list]:
  """Writes the dummy manual_dir; returns {'corrupt_hdf5': frame, 'missing_file': frame}."""
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  frames = synthetic.generate(out_dir, num_frames=NUM_FRAMES, seed=SEED,
                              frames_per_scene=2, compression_level=9,
                              color_step=1 / 64, workers=1)
  train = frames[:NUM_FRAMES["train"]]
  truncated, incomplete = train[1], train[3]
  path = processing.frame_path(out_dir, *truncated, processing.COLOR)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 3])
  os.remove(processing.frame_path(out_dir, *incomplete, processing.SEMANTIC))
  broken = {"corrupt_hdf5": list(truncated), "missing_file": list(incomplete)}
  with open(os.path.join(out_dir, BROKEN), "w") as f:
    json.dump(broken, f, indent=1)
  return broken


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("out", default_dir(), "Output folder.", flag_values=flag_values)


def main(argv: list[str] | None = None) -> int:
  """The command on `argv` (without the program name; None: sys.argv); the exit status."""
  def run(args, positional):
    del positional
    print(make_dummy_data(args.out))
    return 0
  return cli.run_argv(run, define_flags, argv, usage=__doc__.split("\n")[0], positional=False,
                      prog="python -m tfds_hypersim.make_dummy_data")


if __name__ == "__main__":
  sys.exit(main())
