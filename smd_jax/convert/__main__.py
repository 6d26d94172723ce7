"""Command line: convert PyTorch weights into a checkpoint ``config.init_from`` loads.

    # ImageNet encoder (timm's efficientnet_b2/b3/b4 or resnet50; torchvision's
    # resnet50 has the same names): the encoder only, classifier ignored.
    python -m smd_jax.convert --from timm --arch efficientnet_b4 model.safetensors --out DIR
    # ... with the first conv widened to 3 + k input channels now (optional: init_from
    # widens it anyway when the training config has semantic input channels).
    python -m smd_jax.convert --from timm --arch efficientnet_b4 model.safetensors \\
        --in-channels 43 --out DIR
    # A whole smp or semantic_md model (decoder, heads and input channels are read
    # off the weights; --arch is inferred when left out):
    python -m smd_jax.convert --from semantic_md weights.pth --out DIR
    python -m smd_jax.convert --from semantic_md weights.pth --task sobel=depth_edges --out DIR

Writes ``DIR/state`` (Orbax) and ``DIR/smd_jax_convert.json`` and prints what was
loaded and what was ignored. Exit status 1 with the list of problems when the
weights do not fit (unknown names, missing or unexpected tensors, shape mismatches).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import flax
import jax

from smd_jax.convert import converters, io
from smd_jax.convert.core import ConversionError, dotted
from smd_jax.models import registry


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m smd_jax.convert",
      description="Convert PyTorch weights (timm / torchvision ImageNet encoders, whole "
                  "smp / semantic_md models) into a checkpoint for config.init_from.")
  parser.add_argument("weights", help=".safetensors (no torch needed) or .pth/.pt/.bin/.ckpt")
  parser.add_argument("--from", dest="source", required=True, choices=converters.SOURCES,
                      help="layout of the weights")
  parser.add_argument("--arch", choices=sorted(registry.ENCODERS),
                      help="the encoder (inferred from the shapes when left out)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--in-channels", type=int, default=None,
                      help="encoder sources: input channels of the first conv (3 + k); the "
                           "RGB filters are kept, new ones get the encoder init (--seed)")
  parser.add_argument("--task", action="append", default=[], metavar="THEIRS=OURS",
                      help="semantic_md / smp task name map, e.g. sobel=depth_edges "
                           "(defaults: depth, semantic, contours, sobel=depth_edges)")
  parser.add_argument("--seed", type=int, default=0,
                      help="init of what the weights do not cover (new input channels)")
  return parser


def _tasks(pairs: Sequence[str]) -> dict[str, str]:
  out = {}
  for pair in pairs:
    theirs, sep, ours = pair.partition("=")
    if not sep or not theirs or not ours:
      raise SystemExit(f"--task expects THEIRS=OURS, got {pair!r}")
    out[theirs] = ours
  return out


def convert(args: argparse.Namespace) -> dict:
  """Runs one conversion; returns the metadata written."""
  state_dict = io.read_state_dict(args.weights)
  common = {"source": args.source, "input": os.path.abspath(args.weights),
            "sha256": io.sha256(args.weights),
            "versions": {"jax": jax.__version__, "flax": flax.__version__}}
  if args.source in converters.ENCODER_SOURCES:
    in_channels = args.in_channels or 3
    encoder, report, arch = converters.convert_encoder(
        state_dict, args.arch, source=args.source, in_channels=in_channels, seed=args.seed)
    arrays = converters.arrays_of(encoder, report.loaded, prefix=("encoder",))
    meta = {**common, "arch": arch, "scope": "encoder", "in_channels": in_channels,
            "widened": dotted(("encoder",) + report.widened) if report.widened else None}
  else:
    if args.in_channels is not None:
      raise SystemExit("--in-channels is for encoder sources; whole models keep theirs")
    model, report, model_config = converters.convert_model(
        state_dict, args.arch, source=args.source, tasks=_tasks(args.task), seed=args.seed)
    arrays = converters.arrays_of(model, report.loaded)
    meta = {**common, "arch": model_config["encoder"], "scope": "model",
            "in_channels": model_config["in_channels"],
            "model": {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in model_config.items()}}
  meta.update(ignored=sorted(report.ignored), num_arrays=len(arrays),
              num_params=int(sum(a.size for p, a in arrays.items() if not io.is_batch_stat(p))))
  io.save_converted(args.out, arrays, meta)
  return meta


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    meta = convert(args)
  except (ConversionError, ValueError, ImportError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  ignored = meta["ignored"]
  print(f'{meta["source"]} {meta["arch"]} ({meta["scope"]}): {meta["num_arrays"]} arrays, '
        f'{meta["num_params"]:,} parameters -> {os.path.abspath(args.out)}')
  if meta.get("widened"):
    print(f'  widened {meta["widened"]} to {meta["in_channels"]} input channels')
  if meta.get("model"):
    m = meta["model"]
    print(f'  model: {m["encoder"]} {m["decoder"]}, in_channels {m["in_channels"]}, '
          f'input_block {m["input_block"]}, heads '
          + ", ".join(f'{t}:{h["num_outputs"]}' for t, h in m["heads"].items()))
  if ignored:
    shown = ", ".join(ignored[:8]) + (f" (+{len(ignored) - 8} more)" if len(ignored) > 8 else "")
    print(f"  ignored {len(ignored)}: {shown}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
