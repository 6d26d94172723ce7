"""One benchmark run, side by side on one machine: our Flax steps vs the PyTorch
reference models, the input pipeline, the TFDS builder, and scaling with work.

    python -m benchmarks.run --quick                 # small CPU run (7 min on 2 busy cores)
    python -m benchmarks.run --models unet deeplabv3 unet_2head --batch_size 8 --size 128
    python -m benchmarks.run --precision bf16 --batch_size 32 --size 256   # on a GPU
    python -m benchmarks.run --only scaling --scaling_batches 1 2 4 8 --scaling_sizes 128 256 384

For each model, precision and side: compile time (ours: lower + XLA compile of the
jitted step; PyTorch: its first step) reported apart, one untimed warm-up step, then
the median of --repeats timed steps, the two sides' steps timed in alternation (a
shared machine's speed drifts within minutes; both sides see the same minutes), each
timed step right after --settle_steps untimed ones of its own side (as in training,
where a side's steps run back to back); ratios are ours / PyTorch. The PyTorch side runs
on CUDA when available, with channels_last and autocast (bf16) there (see
benchmarks/torch_side.py); ours on JAX's default backend. Writes
<out>/<name>.json (every repeat) and <out>/<name>.md (the tables, also printed).
Flags are absl's; the hyphenated spellings (`--batch-size`) work as well, and a
flag with several values takes them as `--models unet deeplabv3` or repeated.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import types

from absl import flags

from smd_jax import cli, huge_pages

SECTIONS = ("models", "pipeline", "build", "scaling")


MODELS = ("unet", "deeplabv3", "unet_2head")
# Flags that take several values (argparse's `--models unet deeplabv3`; absl's repeated
# `--models=unet --models=deeplabv3` works as well).
MULTI_VALUE = ("only", "models", "sides", "precision", "pipeline_size", "pipeline_threads",
               "pipeline_workers", "scaling_batches", "scaling_sizes")


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the flags (absl; `--batch-size` and `--batch_size` both work)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_bool("quick", False, "Small CPU run: unet only, batch 2, 64x64, 3 repeats, "
                    "small pipeline and build, no scaling (explicit flags still win).", **fv)
  flags.DEFINE_multi_enum("only", None, SECTIONS, "Sections to run (default all but scaling; "
                          "scaling runs when named here or with --scaling).", **fv)
  flags.DEFINE_bool("scaling", False, "Add the scaling section.", **fv)
  flags.DEFINE_multi_enum("models", None, MODELS, "Models (default all; --quick: unet).", **fv)
  flags.DEFINE_string("encoder", "efficientnet_b4", "Encoder of the models.", **fv)
  flags.DEFINE_multi_enum("sides", ["flax", "torch"], ("flax", "torch"), "Sides to run.", **fv)
  flags.DEFINE_integer("batch_size", None, "Batch size (default 8; --quick: 2).", **fv)
  flags.DEFINE_integer("size", None, "Input height = width (default 128; --quick: 64).", **fv)
  flags.DEFINE_multi_enum("precision", ["f32"], ("f32", "bf16"), "Precisions to run.", **fv)
  flags.DEFINE_integer("repeats", None, "Timed steps per figure (default 5; --quick: 3).", **fv)
  flags.DEFINE_integer("settle_steps", 1, "Untimed steps of a side right before each of "
                       "its timed steps, so that each timed step follows one of its own "
                       "as in training (0: none).", lower_bound=0, **fv)
  flags.DEFINE_bool("no_eval", False, "Train steps only.", **fv)
  flags.DEFINE_bool("no_train", False, "Eval steps only.", **fv)
  flags.DEFINE_enum("torch_channels_last", "auto", ("auto", "on", "off"),
                    "auto: on for CUDA, off on the CPU (where it is ~8x slower).", **fv)
  flags.DEFINE_multi_integer("pipeline_size", None, "Input pipeline image sizes.", **fv)
  flags.DEFINE_integer("pipeline_frames", None, "Frames of the pipeline data set.", **fv)
  flags.DEFINE_integer("pipeline_batch_size", 32, "Pipeline batch size.", **fv)
  flags.DEFINE_multi_integer("pipeline_threads", None, "Reader threads (per worker process "
                             "where workers > 0).", **fv)
  flags.DEFINE_multi_integer("pipeline_workers", None, "Worker processes (data.num_workers); "
                             "0 = threads in this process.", **fv)
  flags.DEFINE_integer("build_frames", None, "Frames of the builder benchmark.", **fv)
  flags.DEFINE_integer("build_size", 256, "Resolution of the builder benchmark.", **fv)
  flags.DEFINE_integer("build_workers", None, "Builder decode workers (default: CPU count).",
                       **fv)
  flags.DEFINE_string("scaling_model", "unet", "Model of the scaling section.", **fv)
  flags.DEFINE_multi_integer("scaling_batches", [1, 2, 4, 8, 16], "Batch sizes of the "
                             "batch-size sweep.", **fv)
  flags.DEFINE_integer("scaling_batch_size_at", 128, "Input size of the batch-size sweep.", **fv)
  flags.DEFINE_multi_integer("scaling_sizes", [128, 256, 384], "Input sizes of the input-size "
                             "sweep.", **fv)
  flags.DEFINE_integer("scaling_size_batch", 4, "Batch size of the input-size sweep.", **fv)
  flags.DEFINE_integer("scaling_repeats", 2, "Timed steps per scaling figure.", **fv)
  flags.DEFINE_string("cache_dir", os.path.join("/tmp", "smd_jax_bench_cache"),
                      "Procedural data sets for the pipeline benchmark (reused).", **fv)
  flags.DEFINE_string("out", "benchmarks/results", "Folder for the JSON + Markdown.", **fv)
  flags.DEFINE_string("name", None, "File name stem (default: a timestamp).", **fv)
  # Checked before anything runs: a path here used to fail only when the results were
  # written, after minutes of measuring.
  flags.register_validator(
      "name", lambda name: name is None or (name not in ("", ".", "..") and "/" not in name
                                            and os.sep not in name),
      "must be a file name stem without '/' (the files go to --out)", flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def parse_args(argv=None) -> types.SimpleNamespace:
  """The flags of `argv` (without the program name; None: sys.argv), --quick defaults filled in.

  A bad flag exits with status 1 and one line `error: ...`.
  """
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__,
                                  multi_value=MULTI_VALUE, positional=False,
                                  prog="python -m benchmarks.run")
  args = cli.flag_namespace(flag_values)
  quick = args.quick
  defaults = dict(models=["unet"] if quick else ["unet", "deeplabv3", "unet_2head"],
                  batch_size=2 if quick else 8, size=64 if quick else 128,
                  repeats=3 if quick else 5, pipeline_size=[64] if quick else [64, 256],
                  pipeline_frames=48 if quick else 128,
                  pipeline_threads=[2] if quick else [1, 2, 4, 8],
                  pipeline_workers=[0, 2] if quick else [0, 2, 4],
                  build_frames=4 if quick else 16, build_workers=os.cpu_count() or 1)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.only is None:
    args.only = ["models", "pipeline", "build"] + (["scaling"] if args.scaling else [])
  return args


def _ratio(a, b) -> str:
  return f"{a / b:.2f}x" if a and b else "–"


def _f(value, digits=2) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def model_table(rows: list[dict]) -> str:
  """Ours vs PyTorch per (model, precision, batch, size): images/s and ratios."""
  keyed = {}
  for r in rows:
    keyed.setdefault((r["model"], r["precision"], r["batch_size"], r["size"]), {})[r["side"]] = r
  lines = ["| model | precision | batch | size | train img/s ours | train img/s PyTorch | "
           "train ratio | eval img/s ours | eval img/s PyTorch | eval ratio | compile s "
           "ours (train / eval) | first step s PyTorch (train / eval) | load |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
           "| ---: |"]
  for (model, precision, batch, size), sides in keyed.items():
    ours, ref = sides.get("flax", {}), sides.get("torch", {})
    load = "/".join(_f(s.get("load")) for s in (ours, ref) if s)
    lines.append(
        f"| {model} | {precision} | {batch} | {size} | {_f(ours.get('train_images_per_s'))} | "
        f"{_f(ref.get('train_images_per_s'))} | "
        f"{_ratio(ours.get('train_images_per_s'), ref.get('train_images_per_s'))} | "
        f"{_f(ours.get('eval_images_per_s'))} | {_f(ref.get('eval_images_per_s'))} | "
        f"{_ratio(ours.get('eval_images_per_s'), ref.get('eval_images_per_s'))} | "
        f"{_f(ours.get('train_compile_s'), 1)} / {_f(ours.get('eval_compile_s'), 1)} | "
        f"{_f(ref.get('train_compile_s'), 1)} / {_f(ref.get('eval_compile_s'), 1)} | {load} |")
  return "\n".join(lines)


def pipeline_table(rows: list[dict]) -> str:
  lines = ["| size | batch | worker processes | reader threads | samples/s | spread | "
           "decode, 1 thread, TFDS / direct (samples/s) | start s | load |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['batch_size']} | {r.get('num_workers', 0)} | "
                 f"{r['num_threads']} | {r['samples_per_s']:.0f} | {r['spread']:.2f} | "
                 f"{r['decode_one_thread_per_s']:.0f} / "
                 f"{_f(r.get('fast_decode_one_thread_per_s'), 0)} | {_f(r.get('start_s'), 1)} | "
                 f"{_f(r.get('load'))} |")
  return "\n".join(lines)


def scaling_table(rows: list[dict]) -> str:
  lines = ["| side | precision | batch | size | train img/s | train step s | eval img/s | "
           "eval step s | repeats | load |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    repeats = len(r.get("train_times", r.get("eval_times", [])))
    lines.append(f"| {r['side']} | {r['precision']} | {r['batch_size']} | {r['size']} | "
                 f"{_f(r.get('train_images_per_s'))} | {_f(r.get('train_step_s'), 3)} | "
                 f"{_f(r.get('eval_images_per_s'))} | {_f(r.get('eval_step_s'), 3)} | "
                 f"{repeats} | {_f(r.get('load'))} |")
  return "\n".join(lines)


def run_models(args, log) -> list[dict]:
  rows = []
  for precision in args.precision:
    for model in args.models:
      rows += run_pair(args, log, model, precision, args.batch_size, args.size, args.repeats)
  return rows


def run_pair(args, log, model, precision, batch_size, size, repeats) -> list[dict]:
  """Ours and the reference on one shape, their steps timed in alternation
  (`timing.interleave`); a side that fails to build is logged and left out."""
  from benchmarks import flax_side, timing  # pylint: disable=g-import-not-at-top
  kwargs = dict(encoder=args.encoder, batch_size=batch_size, size=size, precision=precision,
                train=not args.no_train, evaluate=not args.no_eval)
  rows, runs = {}, {}
  for side in args.sides:
    log(f"{side} {model} {precision} batch {batch_size} size {size}: build and compile ...")
    try:
      if side == "flax":
        rows[side], runs[side] = flax_side.prepare(model, **kwargs)
      else:
        from benchmarks import torch_side  # pylint: disable=g-import-not-at-top
        channels_last = {"auto": None, "on": True, "off": False}[args.torch_channels_last]
        rows[side], runs[side] = torch_side.prepare(
            model, channels_last=channels_last,
            batch=flax_side.random_batch(batch_size, size), **kwargs)
    except ImportError as e:
      log(f"  skipped: {e}")
  for step in ("train", "eval"):
    sides = {side: side_runs[step] for side, side_runs in runs.items() if step in side_runs}
    if not sides:
      continue
    log(f"  {step}: {repeats} rounds of {' + '.join(sides)}, each timed step after "
        f"{args.settle_steps} untimed ...")
    timings = timing.interleave(sides, repeats=repeats, warmup=1, items=batch_size,
                                settle=args.settle_steps)
    for side, t in timings.items():
      rows[side].update({f"{step}_images_per_s": t.per_s, f"{step}_step_s": t.median_s,
                         f"{step}_times": t.times})
  for side, row in rows.items():
    row["load"] = _load()
    row["settle_steps"] = args.settle_steps
    log(f"  {side}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()
                                   if k.endswith(("per_s", "compile_s", "step_s"))))
  return list(rows.values())


def run_pipeline(args, log) -> list[dict]:
  from benchmarks import pipeline  # pylint: disable=g-import-not-at-top
  rows = []
  for size in args.pipeline_size:
    log(f"input pipeline {size}x{size}, {args.pipeline_frames} frames ...")
    for row in pipeline.benchmark(args.cache_dir, size=size, num_frames=args.pipeline_frames,
                                  batch_size=args.pipeline_batch_size,
                                  threads=tuple(args.pipeline_threads),
                                  workers=tuple(args.pipeline_workers),
                                  batches=max(2, 256 // args.pipeline_batch_size),
                                  repeats=args.repeats):
      row["load"] = _load()
      log(f"  {row['num_workers']} workers x {row['num_threads']} threads: "
          f"{row['samples_per_s']:.0f} samples/s (decode on 1 thread: TFDS "
          f"{row['decode_one_thread_per_s']:.0f}/s, direct "
          f"{row['fast_decode_one_thread_per_s']:.0f}/s; load {row['load']})")
      rows.append(row)
  return rows


def run_build(args, log) -> tuple[list[dict], str | None]:
  """The builder's frames/s via benchmarks/build_throughput.py, when that exists."""
  try:
    from benchmarks import build_throughput  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    reason = f"benchmarks/build_throughput.py not importable ({e}); builder row skipped"
    log(reason)
    return [], reason
  log(f"builder: {args.build_frames} frames at {args.build_size}, "
      f"{args.build_workers} workers ...")
  frames_per_s = build_throughput.measure_build(args.build_frames, args.build_size,
                                                args.build_workers)
  log(f"  {frames_per_s:.2f} frames/s")
  return [{"side": "build", "frames": args.build_frames, "size": args.build_size,
           "workers": args.build_workers, "frames_per_s": frames_per_s, "load": _load()}], None


def run_scaling(args, log) -> list[dict]:
  rows = []
  shapes = [(b, args.scaling_batch_size_at) for b in args.scaling_batches]
  shapes += [(args.scaling_size_batch, s) for s in args.scaling_sizes
             if (args.scaling_size_batch, s) not in shapes]
  for precision in args.precision:
    for batch_size, size in shapes:
      rows += run_pair(args, log, args.scaling_model, precision, batch_size, size,
                       args.scaling_repeats)
  return rows


def _load():
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  return timing.load_average()


def write_result(out: str, name: str, result: dict, text: str) -> str:
  """<out>/<name>.json (everything measured) and <out>/<name>.md (`text`); prints both
  paths' stem. Returns the stem."""
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, name)
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=1, default=str)
  with open(stem + ".md", "w") as f:
    f.write(text)
  print("\n" + text)
  print(f"wrote {stem}.json and {stem}.md")
  return stem


def render(result: dict) -> str:
  m = result["machine"]
  parts = [f"# Benchmark {result['name']}\n",
           f"{m['date']}; {m['cpu']}, {m['cores']} cores; JAX backend {result['backend']} "
           f"({result['device']}); jax {m['jax']}, flax {m['flax']}, torch {m['torch']}, "
           f"timm {m['timm']}, smp {m['segmentation_models_pytorch']}, grain {m['grain']}; "
           f"GLIBC_TUNABLES {m.get('glibc_tunables') or 'unset'}; "
           f"load average at start {result['load_start']}, end {result['load_end']}; "
           f"wall {result['wall_s']:.0f} s.\n\n`{result['command']}`\n"]
  if result["models"]:
    parts.append("## Train and eval throughput (ours vs PyTorch)\n\n"
                 + model_table(result["models"]) + "\n")
  if result["pipeline"]:
    parts.append("## Input pipeline (array_record -> grain batches)\n\n"
                 + pipeline_table(result["pipeline"]) + "\n")
  if result["build"] or result["build_skipped"]:
    text = result["build_skipped"] or "\n".join(
        f"{r['frames_per_s']:.2f} frames/s ({r['frames']} frames at {r['size']}, "
        f"{r['workers']} workers, load {r['load']})" for r in result["build"])
    parts.append("## Builder\n\n" + text + "\n")
  if result["scaling"]:
    parts.append("## Scaling\n\n" + scaling_table(result["scaling"]) + "\n")
  return "\n".join(parts)


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "." not in sys.path and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # configs/ imports `configs.base`
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top

  name = args.name or time.strftime("%Y%m%d-%H%M%S")
  log = lambda msg: print(f'[{time.strftime("%H:%M:%S")} load {_load()}] {msg}', flush=True)
  result = {"name": name, "command": "python -m benchmarks.run " + " ".join(
      sys.argv[1:] if argv is None else argv), "args": vars(args), "machine": timing.machine(),
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "load_start": _load(), "models": [], "pipeline": [], "build": [],
            "build_skipped": None, "scaling": [], "errors": []}
  start = time.perf_counter()
  sections = {"models": run_models, "pipeline": run_pipeline, "scaling": run_scaling}
  for section in args.only:
    try:
      if section == "build":
        result["build"], result["build_skipped"] = run_build(args, log)
      else:
        result[section] = sections[section](args, log)
    except Exception as e:  # pylint: disable=broad-except
      log(f"{section} failed: {e!r}")
      result["errors"].append(f"{section}: {traceback.format_exc()}")
  result["wall_s"] = time.perf_counter() - start
  result["load_end"] = _load()
  write_result(args.out, name, result, render(result))
  return 1 if result["errors"] else 0


if __name__ == "__main__":
  huge_pages.reexec_with_huge_pages()
  sys.exit(main())
