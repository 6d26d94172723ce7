"""Numerical fidelity table: our Flax models vs the PyTorch originals (docs/fidelity.md).

    python benchmarks/fidelity.py                 # every model, Markdown table on stdout
    python benchmarks/fidelity.py --only resnet50 unet  # models whose name has all words
    python benchmarks/fidelity.py --json out.jsonl
    python benchmarks/fidelity.py --table out.jsonl    # the table of a --json file

Needs the torch extra (tools/install_torch_reference.sh). For each model: random
PyTorch weights and calibrated random BatchNorm statistics, converted with
smd_jax.convert; eval mode on 2x64x64 and 2x64x96 inputs, train mode (one pass,
dropout off) on 2x64x64; largest absolute differences of the features, outputs and
running statistics, and PyTorch's own float32 error against float64 on the same
inputs (smd_jax/convert/fidelity.py). Runs on the CPU.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from smd_jax import cli  # pylint: disable=g-import-not-at-top
from smd_jax.convert import fidelity  # pylint: disable=g-import-not-at-top

SHAPES = ((2, 64, 64), (2, 64, 96))
TRAIN_SHAPE = (2, 64, 64)

# (name, function, kwargs), in table order.
MODELS = [
    ("efficientnet_b2 encoder", fidelity.encoder_fidelity, dict(arch="efficientnet_b2")),
    ("efficientnet_b3 encoder", fidelity.encoder_fidelity, dict(arch="efficientnet_b3")),
    ("efficientnet_b4 encoder", fidelity.encoder_fidelity, dict(arch="efficientnet_b4")),
    ("resnet50 encoder", fidelity.encoder_fidelity, dict(arch="resnet50")),
    ("unet efficientnet_b4", fidelity.smp_fidelity, dict(encoder="efficientnet_b4",
                                                         decoder="unet")),
    ("deeplabv3 efficientnet_b4", fidelity.smp_fidelity, dict(encoder="efficientnet_b4",
                                                              decoder="deeplabv3")),
    ("unet resnet50", fidelity.smp_fidelity, dict(encoder="resnet50", decoder="unet")),
    ("deeplabv3 resnet50", fidelity.smp_fidelity, dict(encoder="resnet50",
                                                       decoder="deeplabv3")),
    ("2-head unet efficientnet_b4", fidelity.semantic_md_fidelity,
     dict(encoder="efficientnet_b4")),
    ("3-head unet efficientnet_b4", fidelity.semantic_md_fidelity,
     dict(encoder="efficientnet_b4", tasks={"depth": 1, "semantic": 40, "contours": 2})),
]

HEADER = ("| model | PyTorch reference | params ours / reference | eval features | "
          "eval outputs | train features | train outputs | train running stats | "
          "eval: PyTorch / ours vs f64 | train: PyTorch / ours vs f64 | max \\|feature\\| | s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def row(result: fidelity.Result) -> str:
  e = lambda v: f"{v:.1e}"
  outputs = (lambda v: "–" if not result.output_scale else e(v))
  same = "=" if result.params == result.reference_params else "≠"
  return (f"| {result.name} | `{result.reference}` | {result.params:,} {same} "
          f"{result.reference_params:,} | {e(result.eval_features)} | "
          f"{outputs(result.eval_outputs)} | {e(result.train_features)} | "
          f"{outputs(result.train_outputs)} | {e(result.train_stats)} | "
          f"{e(result.reference_eval_error)} / {e(result.exact_eval_error)} | "
          f"{e(result.reference_train_error)} / {e(result.exact_train_error)} | "
          f"{result.feature_scale:.1f} | {result.seconds:.0f} |")


def define_flags(flag_values: flags.FlagValues) -> None:
  fv = dict(flag_values=flag_values)
  flags.DEFINE_multi_string("only", [], "Words the model name must have: --only resnet50 unet "
                            "or repeated.", **fv)
  flags.DEFINE_string("json", None, "Append one JSON line per model to this file.", **fv)
  flags.DEFINE_string("table", None, "Only print the table of a --json file.", **fv)


def parse_args(argv=None):
  """The flags of `argv` (without the program name; None: sys.argv); exits 1 on a bad one."""
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__, multi_value=("only",),
                                  positional=False, prog="python benchmarks/fidelity.py")
  return cli.flag_namespace(flag_values)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.table:
    print(HEADER)
    with open(args.table) as f:
      for line in f:
        record = json.loads(line)
        record["shapes"] = tuple(map(tuple, record["shapes"]))
        record["train_shape"] = tuple(record["train_shape"])
        print(row(fidelity.Result(**record)))
    return 0
  import torch  # pylint: disable=g-import-not-at-top
  fidelity.import_reference()
  import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores; torch {torch.__version__}, timm {timm.__version__}, "
        f"smp {smp.__version__}, jax {jax.__version__}, flax {flax.__version__}; "
        f"eval inputs {SHAPES}, train input {TRAIN_SHAPE}\n", flush=True)
  print(HEADER, flush=True)
  for name, fn, kwargs in MODELS:
    if not all(word in name for word in args.only):
      continue
    start = time.time()
    result = fn(**kwargs, shapes=SHAPES, train_shape=TRAIN_SHAPE)
    result.name, result.seconds = name, time.time() - start
    print(row(result), flush=True)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps(dataclasses.asdict(result)) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
