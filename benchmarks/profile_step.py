"""Where the jitted train (or eval) step spends its time, per XLA operation (any backend).

    python -m benchmarks.profile_step --model unet --batch_size 8 --size 64 --steps 3
    python -m benchmarks.profile_step --step eval --batch_size 2 --size 256

Runs the step under `jax.profiler.trace`, reads the per-thunk events of the trace
(`jax.profiler.ProfileData`; on the CPU each executed HLO instruction is one event
with an `hlo_op` stat) and joins them with the optimised HLO of the compiled step to
put each instruction in a category: forward / backward (the op_name metadata of a
gradient op contains `transpose(`) x kind (1x1 / kxk / grouped convolution, dot,
reduction, layout copy, slices of the depthwise taps, elementwise, other). Prints
Markdown tables: milliseconds per step by category and the slowest instructions.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile

from smd_jax import huge_pages  # imports no jax

if __name__ == "__main__":  # first: only the re-executed process pays the imports below
  huge_pages.reexec_with_huge_pages()

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from smd_jax import cli  # noqa: E402
from smd_jax.training import data_parallel, steps as steps_lib  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> tuple[dict[str, str], dict[str, str]]:
  """(instruction name -> its line, computation name -> its body) of an HLO module."""
  instructions, computations = {}, {}
  current, body = None, []
  for line in text.splitlines():
    if current is None:
      # A computation header is unindented and opens a block (ENTRY's may be long
      # and hold '=' in /*index=N*/ comments); instructions are indented.
      m = _COMPUTATION.match(line)
      if m and not line[:1].isspace() and line.rstrip().endswith("{"):
        current, body = m.group(1), []
      continue
    if line.strip() == "}":
      computations[current] = "\n".join(body)
      current = None
      continue
    body.append(line)
    m = _INSTRUCTION.match(line)
    if m:
      instructions[m.group(1)] = m.group(2)
  return instructions, computations


def categorize(line: str, computations: dict[str, str], step: str = "train") -> str:
  """'forward|backward|update: kind' of one top-level HLO instruction (of an eval step:
  'eval: kind')."""
  op_name = re.search(r'op_name="([^"]*)"', line)
  op_name = op_name.group(1) if op_name else ""
  called = re.findall(r"calls=%?([\w.\-]+)", line)
  body = line + "\n" + "\n".join(computations.get(c, "") for c in called)
  if step == "eval":  # no autodiff: every instruction is the forward pass or the metrics
    phase = "eval"
  elif "transpose(" in op_name:
    phase = "backward"
  elif "jvp(" in op_name or "jvp()" in op_name:
    phase = "forward"
  else:
    phase = "update/other"
  if "convolution(" in body:
    window = re.search(r"window=\{size=(\d+)x(\d+)", body)
    if "feature_group_count" in body or "batch_group_count" in body:
      kind = "grouped conv"
    elif window and window.group(1) == window.group(2) == "1":
      kind = "conv 1x1"
    else:
      kind = "conv kxk"
  elif " dot(" in body:
    kind = "dot (1x1 convs: XLA rewrites them as dots)"
  elif " reduce(" in body or " reduce-window(" in body:
    kind = "reduce-window" if "reduce-window(" in body else "reduction"
  elif " slice(" in body or " pad(" in body:
    kind = "slice/pad (depthwise taps)"
  elif "transpose" in line.split("(")[0] or "copy" in line.split("=")[0] or (
      " copy(" in body or " transpose(" in body):
    kind = "layout copy/transpose"
  elif " fusion(" in line:
    kind = "elementwise fusion"
  else:
    kind = "other"
  return f"{phase}: {kind}"


def trace_events(trace_dir: str) -> dict[str, float]:
  """HLO instruction name -> total microseconds over every traced execution."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  totals = collections.defaultdict(float)
  for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
    for plane in ProfileData.from_file(path).planes:
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          if "hlo_op" in stats:
            totals[str(stats["hlo_op"])] += event.duration_ns / 1e3
  return totals


def profile(model: str, *, batch_size: int, size: int, precision: str, steps: int,
            encoder: str = "efficientnet_b4", step: str = "train") -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import flax_side  # pylint: disable=g-import-not-at-top

  import time  # pylint: disable=g-import-not-at-top

  config = flax_side.make_config(model, encoder=encoder, batch_size=batch_size, size=size,
                                 precision=precision)
  mesh = data_parallel.make_mesh()
  built, state = steps_lib.build_steps(config, steps_lib.create_model(config, 0),
                                       total_steps=1000, mesh=mesh)
  host_batch = flax_side.random_batch(batch_size, size)
  if step == "eval":
    host_batch["mask"] = np.ones(batch_size, bool)
  batch = data_parallel.to_global(host_batch, mesh)
  if step == "eval":
    compiled = built.eval_step.lower(state, batch).compile()  # fills the cache the calls use
    run = lambda state: (state, built.eval_step(state, batch))
  else:
    compiled = built.train_step.lower(state, batch).compile()
    run = lambda state: compiled(state, batch)  # donates the old state
  state, out = run(state)
  jax.block_until_ready(out)
  trace_dir = tempfile.mkdtemp(prefix="smd_jax_profile_")
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, out = run(state)
      jax.block_until_ready(out)
  wall_ms = (time.perf_counter() - start) * 1e3 / steps
  instructions, computations = parse_hlo(compiled.as_text())
  per_op = {k: v / steps / 1e3 for k, v in trace_events(trace_dir).items()}  # ms / step
  by_category = collections.defaultdict(float)
  rows = []
  for name, ms in per_op.items():
    line = instructions.get(name, "")
    category = categorize(line, computations, step)
    by_category[category] += ms
    op_name = re.search(r'op_name="([^"]*)"', line)
    rows.append((ms, name, category, op_name.group(1) if op_name else ""))
  rows.sort(reverse=True)
  return {"model": model, "step": step, "batch_size": batch_size, "size": size,
          "precision": precision, "steps": steps, "wall_ms_per_step": wall_ms,
          "op_ms_per_step": sum(per_op.values()),
          "by_category": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
          "top": rows[:25], "num_ops": len(per_op)}


def render(result: dict) -> str:
  total = result["op_ms_per_step"]
  lines = [f"{result['model']} {result['step']} step, batch {result['batch_size']}, "
           f"{result['size']}x{result['size']}, {result['precision']}: "
           f"{result['wall_ms_per_step']:.0f} ms per "
           f"traced step (wall), {total:.0f} ms summed over {result['num_ops']} HLO "
           "instructions (threads overlap: the sum can exceed the wall time)\n",
           "| category | ms / step | share |", "| --- | ---: | ---: |"]
  for category, ms in result["by_category"].items():
    lines.append(f"| {category} | {ms:.1f} | {100 * ms / total:.1f}% |")
  lines += ["", "| instruction | category | ms / step | op_name |", "| --- | --- | ---: | --- |"]
  for ms, name, category, op_name in result["top"]:
    lines.append(f"| {name} | {category} | {ms:.1f} | `{op_name[-70:]}` |")
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the flags (absl; `--batch-size` and `--batch_size` both work)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("model", "unet", "Benchmark model (benchmarks/flax_side.py).", **fv)
  flags.DEFINE_string("encoder", "efficientnet_b4", "Encoder of the model.", **fv)
  flags.DEFINE_integer("batch_size", 8, "Batch size.", **fv)
  flags.DEFINE_integer("size", 64, "Input height = width.", **fv)
  flags.DEFINE_enum("precision", "f32", ("f32", "bf16"), "Compute precision.", **fv)
  flags.DEFINE_enum("step", "train", ("train", "eval"), "The step to profile.", **fv)
  flags.DEFINE_integer("steps", 3, "Profiled steps.", **fv)
  flags.DEFINE_string("out", None, "Also write the Markdown here.", **fv)
  cli.define_hyphen_aliases(flag_values)


def parse_args(argv=None):
  """The flags of `argv` (without the program name; None: sys.argv); exits 1 on a bad one."""
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__, positional=False,
                                  prog="python -m benchmarks.profile_step")
  return cli.flag_namespace(flag_values)


def main(argv=None) -> int:
  args = parse_args(argv)
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  result = profile(args.model, batch_size=args.batch_size, size=args.size,
                   precision=args.precision, steps=args.steps, encoder=args.encoder,
                   step=args.step)
  text = render(result)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
