"""One-shot accelerator check: the device, correctness checks on it, and the
side-by-side benchmark against PyTorch, written to benchmarks/results/.

    python -m benchmarks.accelerator_check                 # on a GPU or TPU VM
    python -m benchmarks.accelerator_check --skip-benchmark  # the checks only

What it does, in order (about 10 XLA compiles of the paper model in all):

1. Reports the device: JAX backend, device kind and count, memory, jax / jaxlib /
   plugin versions, and PyTorch's view of the machine.
2. Checks, on the paper model (UNet, EfficientNet-b4, depth head; `--check-size`
   px, 2 images per device unless `--check-batch`), all at float32 matmul
   precision "highest" (no TF32) except the bf16 step:
   - `outputs_match_cpu`: eval-mode outputs computed on all local devices (batch
     sharded) equal those of one CPU device within 1e-4 x max(1, |output|) -- the
     bound the converter tests put on two float32 implementations
     (docs/fidelity.md).
   - `bf16_step`: one mixed-precision train step keeps parameters, BatchNorm
     statistics, optimizer state and metrics float32 and finite, and its loss is
     within 2 % of the float32 step's from the same weights and batch (bf16 keeps 8
     significant bits, 0.4 % per rounding; the loss is a mean over all pixels).
   - `no_recompile`: three more bf16 train steps on new batches, the returned
     (donated) state fed back, and two eval steps compile nothing.
   - `mesh_all_devices`: the float32 train step with the batch sharded over all
     local devices gives the loss, gradient norm and new BatchNorm statistics of
     the same step on one device (so BatchNorm statistics are global, not per
     device); skipped with one device.
3. The benchmark of benchmarks/run.py: ours in bf16 against PyTorch with autocast
   bf16 (AMP, channels_last), train and eval, batch 32 at 256x256. The PyTorch side
   runs only where it has the device: on CUDA when JAX runs on a GPU (skipped when
   PyTorch has no CUDA), on the CPU when JAX does, never on a TPU.

Writes <out>/<name>.json (everything, every repeat) and <out>/<name>.md, and exits
with 1 when a check fails or a benchmark side errs (skips do not fail).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
import traceback
import types
from typing import Any, Callable

# JAX must not take most of the GPU's memory up front: PyTorch runs next to it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from smd_jax import cli  # noqa: E402

# Packages whose versions say which accelerator build of JAX (and PyTorch) is in use.
VERSION_PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
                    "jax-cuda13-pjrt", "libtpu", "flax", "optax", "orbax-checkpoint", "grain",
                    "numpy", "torch", "timm", "segmentation-models-pytorch")
# Relative bound for float32 results of two summation orders: the converter tests'
# bound for two float32 implementations (docs/fidelity.md), relative above 1.
F32_TOL = 1e-4
# A train-mode loss is a mean over the batch of outputs normalised by batch
# statistics reduced in another order; docs/fidelity.md measures train-mode features of
# two float32 orders up to 3e-3 apart, and the mean over all pixels shrinks that: 1e-3.
F32_LOSS_RTOL = 1e-3
# The gradient passes back through BatchNorm's division by the batch standard
# deviation, which amplifies order differences in nearly constant channels: 1e-2.
# What the check is for changes both by far more: per-device BatchNorm statistics, a
# gradient summed over one shard or over all n twice, a loss averaged per device.
F32_GRAD_RTOL = 1e-2
BF16_LOSS_RTOL = 0.02  # 5x bf16's per-rounding error (2^-8), as tests/test_bf16.py
STEP_FUNCTIONS = ("train_step", "eval_step")  # names whose compiles no_recompile counts


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command's flags (absl; the argparse spellings `--check-size` etc. work too)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_enum("model", "unet", ["unet", "deeplabv3", "unet_2head"], "Model.", **fv)
  flags.DEFINE_string("encoder", "efficientnet_b4", "Encoder.", **fv)
  flags.DEFINE_integer("check_size", 64, "Input size of the checks.", **fv)
  flags.DEFINE_integer("check_batch", None,
                       "Global batch of the checks (default 2 per local device).", **fv)
  flags.DEFINE_integer("batch_size", 32, "Benchmark batch.", **fv)
  flags.DEFINE_integer("size", 256, "Benchmark input height = width.", **fv)
  flags.DEFINE_integer("repeats", 10, "Timed benchmark steps per figure.", **fv)
  flags.DEFINE_multi_enum("sides", ["flax", "torch"], ["flax", "torch"], "Sides to time.", **fv)
  flags.DEFINE_bool("skip_checks", False, "Only the benchmark.", **fv)
  flags.DEFINE_bool("skip_benchmark", False, "Only the checks.", **fv)
  flags.DEFINE_integer("seed", 0, "Random seed.", **fv)
  flags.DEFINE_string("out", "benchmarks/results", "Folder for the JSON + Markdown.", **fv)
  flags.DEFINE_string("name", None,
                      "File name stem (default: accelerator-<backend>-<UTC time>).", **fv)
  cli.define_hyphen_aliases(flag_values)


def parse_args(argv=None) -> types.SimpleNamespace:
  """The flags of `argv` (without the program name; None: sys.argv); a bad flag exits
  with status 1 and one line `error: ...`."""
  flag_values, _ = cli.parse_argv(define_flags, argv, usage=__doc__, multi_value=("sides",),
                                  positional=False, prog="python -m benchmarks.accelerator_check")
  return cli.flag_namespace(flag_values)


def _versions() -> dict[str, str | None]:
  versions = {}
  for name in VERSION_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def device_report() -> dict:
  """JAX's backend and local devices (kind, platform, memory limit in bytes where the
  runtime reports it), process and device counts, and package versions."""
  devices = []
  for d in jax.local_devices():
    row = {"id": d.id, "platform": d.platform, "kind": d.device_kind,
           "process_index": d.process_index}
    try:
      stats = d.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except
      stats = {}  # the CPU and some runtimes report none
    if "bytes_limit" in stats:
      row["memory_bytes"] = int(stats["bytes_limit"])
    devices.append(row)
  return {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(), "devices": devices,
          "python": platform.python_version(), "versions": _versions()}


def torch_plan(backend: str, import_torch: Callable[[], Any] | None = None
               ) -> tuple[bool, str | None]:
  """Whether the PyTorch side runs next to JAX's `backend`, and why not.

  PyTorch runs on the device JAX uses or not at all: CUDA for "gpu" (benchmarks/
  torch_side.py picks CUDA whenever it has it), the CPU for "cpu"; there is no
  PyTorch/XLA here, so never for "tpu" or other backends."""
  if backend not in ("gpu", "cpu"):
    return False, f"no PyTorch side on the {backend} backend"
  try:
    torch = (import_torch or _import_torch)()
  except ImportError as e:
    return False, f"PyTorch reference not installed ({e}): tools/install_torch_reference.sh"
  has_cuda = bool(torch.cuda.is_available())
  if backend == "gpu" and not has_cuda:
    return False, f"torch {torch.__version__} has no CUDA device (a CPU build?)"
  if backend == "cpu" and has_cuda:
    return False, "torch would run on CUDA while JAX runs on the CPU"
  return True, None


def _import_torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def relative_error(got, want) -> float:
  """max |got - want| / max(1, max |want|) over all leaves of two pytrees of arrays."""
  worst = 0.0
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    if g.shape != w.shape:
      raise ValueError(f"shapes differ: {g.shape} vs {w.shape}")
    if g.size:
      worst = max(worst, float(np.max(np.abs(g - w)) / max(1.0, float(np.max(np.abs(w))))))
  return worst


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if _is_float(x.dtype)}


def _is_float(dtype) -> bool:
  return bool(np.issubdtype(np.dtype(dtype), np.floating)) or str(dtype) == "bfloat16"


class _CompileCounter:
  """Counts JAX lowerings (jaxpr -> MLIR, one per jit cache miss, also when the
  persistent compilation cache then skips XLA) per function name."""

  EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

  def __init__(self):
    self.names: list[str] = []

  def __call__(self, event, duration, **kwargs):
    del duration
    if event == self.EVENT:
      self.names.append(str(kwargs.get("fun_name", "?")))

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def _lowering_counted() -> bool:
  """Whether this JAX reports lowerings to _CompileCounter (else no_recompile
  would pass vacuously)."""
  with _CompileCounter() as counter:
    jax.jit(lambda x: x * 3 + 1).lower(np.arange(3.0))
  return bool(counter.names)


class _Checks:
  """Runs the checks in order, sharing the compiled steps between them."""

  def __init__(self, args, log):
    from benchmarks import flax_side  # pylint: disable=g-import-not-at-top
    self.args, self.log, self.flax_side = args, log, flax_side
    self.n = jax.local_device_count()
    self.batch = args.check_batch or 2 * self.n
    self.results: list[dict] = []

  def config(self, precision: str):
    return self.flax_side.make_config(self.args.model, encoder=self.args.encoder,
                                      batch_size=self.batch, size=self.args.check_size,
                                      precision=precision)

  def build(self, precision: str, mesh: Mesh):
    """Fresh model (same seed, so the same initial weights) and jitted steps."""
    from smd_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
    config = self.config(precision)
    return steps_lib.build_steps(config, steps_lib.create_model(config, self.args.seed),
                                 total_steps=1000, mesh=mesh)

  def host_batch(self, seed: int, evaluate: bool = False) -> dict[str, np.ndarray]:
    batch = self.flax_side.random_batch(self.batch, self.args.check_size, seed=seed)
    if evaluate:
      batch["mask"] = np.ones(self.batch, bool)
    return batch

  def record(self, name: str, fn: Callable[[], dict]) -> dict | None:
    """Runs one check; its dict gets status pass / fail / skip and seconds."""
    self.log(f"check {name} ...")
    start = time.perf_counter()
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      result = {"status": "fail", "detail": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}
    result = {"name": name, **result, "seconds": round(time.perf_counter() - start, 1)}
    self.log(f"  {result['status']}: {result.get('detail', '')} ({result['seconds']} s)")
    self.results.append(result)
    return result

  def run(self) -> list[dict]:
    from smd_jax.training import data_parallel  # pylint: disable=g-import-not-at-top
    if self.batch % self.n:
      raise ValueError(f"--check-batch {self.batch} is not divisible by the {self.n} local "
                       "devices; choose a multiple.")
    mesh = data_parallel.make_mesh(self.n)
    shared: dict[str, Any] = {}
    highest = lambda: jax.default_matmul_precision("highest")  # float32 without TF32
    with highest():
      self.f32_checks(mesh, shared)
    # The bf16 step at the default precision, as training and the benchmark run it (at
    # the benchmark's shape, its compiled program is the benchmark's).
    self.record("bf16_step", lambda: self.bf16_step(mesh, shared))
    self.record("no_recompile", lambda: self.no_recompile(mesh, shared))
    with highest():
      self.record("mesh_all_devices", lambda: self.mesh_all_devices(shared))
    return self.results

  def f32_checks(self, mesh, shared: dict[str, Any]) -> None:
    """The float32 checks on one built state; the train step donates it, so it must not
    outlive them (a local here, released on return)."""
    steps, state = self.build("f32", mesh)
    self.record("outputs_match_cpu", lambda: self.outputs_match_cpu(steps, state, mesh))
    self.record("f32_step", lambda: self.f32_step(steps, state, mesh, shared))

  def outputs_match_cpu(self, steps, state, mesh) -> dict:
    from smd_jax.training import data_parallel  # pylint: disable=g-import-not-at-top
    try:
      cpu = jax.devices("cpu")[0]
    except RuntimeError as e:
      return {"status": "skip", "detail": f"no CPU backend in this process ({e})"}
    cpu_mesh = jax.make_mesh((1,), (data_parallel.DATA_AXIS,), devices=[cpu],
                             axis_types=(jax.sharding.AxisType.Auto,))
    batch = self.host_batch(0, evaluate=True)
    forward = jax.jit(steps.forward)
    on_device = data_parallel.fetch(forward(state, data_parallel.to_global(batch, mesh)))
    cpu_state = data_parallel.replicate(data_parallel.fetch(state), cpu_mesh)
    on_cpu = data_parallel.fetch(forward(cpu_state, data_parallel.to_global(batch, cpu_mesh)))
    error = relative_error(on_device, on_cpu)
    scale = max(float(np.max(np.abs(v))) for v in jax.tree.leaves(on_cpu))
    where = f"{self.n} {jax.default_backend()} device(s), batch sharded"
    return {"status": "pass" if error <= F32_TOL else "fail",
            "detail": f"{where} vs 1 CPU device: max |diff| / max(1, |out|) = {error:.2e} "
                      f"(bound {F32_TOL:g}; max |out| {scale:.3g})",
            "relative_error": error, "max_abs_output": scale}

  def f32_step(self, steps, state, mesh, shared) -> dict:
    """The float32 train step on all devices: the reference of the next checks."""
    from smd_jax.training import data_parallel  # pylint: disable=g-import-not-at-top
    new_state, metrics = steps.train_step(state, data_parallel.to_global(self.host_batch(0),
                                                                         mesh))
    shared["f32"] = (jax.device_get(metrics), data_parallel.fetch(new_state.model_state))
    loss = float(metrics["loss"])
    ok = np.isfinite(loss) and not bool(metrics["nonfinite"])
    return {"status": "pass" if ok else "fail", "detail": f"loss {loss:.6f}", "loss": loss}

  def bf16_step(self, mesh, shared) -> dict:
    from smd_jax.training import data_parallel  # pylint: disable=g-import-not-at-top
    steps, state = self.build("bf16", mesh)
    new_state, metrics = steps.train_step(state, data_parallel.to_global(self.host_batch(0),
                                                                         mesh))
    shared["bf16"] = (steps, new_state)
    metrics = jax.device_get(metrics)
    problems = []
    for part in ("params", "model_state", "opt_state"):
      extra = _float_dtypes(getattr(new_state, part)) - {"float32"}
      if extra:
        problems.append(f"{part} has {sorted(extra)}")
    extra = {k for k, v in metrics.items() if _is_float(v.dtype) and v.dtype != np.float32}
    if extra:
      problems.append(f"metrics not float32: {sorted(extra)}")
    loss = float(metrics["loss"])
    if not np.isfinite(loss) or bool(metrics["nonfinite"]):
      problems.append(f"non-finite step (loss {loss})")
    detail = f"loss {loss:.6f}"
    if "f32" in shared:
      want = float(shared["f32"][0]["loss"])
      rel = abs(loss - want) / abs(want)
      detail += f" vs float32 {want:.6f} (relative {rel:.2e}, bound {BF16_LOSS_RTOL:g})"
      if not rel <= BF16_LOSS_RTOL:
        problems.append("loss too far from float32")
    else:
      problems.append("no float32 step to compare with")
    return {"status": "fail" if problems else "pass",
            "detail": "; ".join([detail] + problems), "loss": loss}

  def no_recompile(self, mesh, shared) -> dict:
    from smd_jax.training import data_parallel  # pylint: disable=g-import-not-at-top
    if "bf16" not in shared:
      return {"status": "skip", "detail": "the bf16 step did not run"}
    if not _lowering_counted():
      return {"status": "fail", "detail": "this JAX reports no lowering events: cannot count"}
    steps, state = shared.pop("bf16")
    eval_batch = lambda seed: data_parallel.to_global(self.host_batch(seed, True), mesh)
    jax.block_until_ready(steps.eval_step(state, eval_batch(0)))  # its first compile
    with _CompileCounter() as counter:
      for seed in (1, 2, 3):
        state, metrics = steps.train_step(state, data_parallel.to_global(self.host_batch(seed),
                                                                         mesh))
      for seed in (1, 2):
        sums = steps.eval_step(state, eval_batch(seed))
      jax.block_until_ready((state, metrics, sums))
    compiled = [n for n in counter.names if any(s in n for s in STEP_FUNCTIONS)]
    return {"status": "fail" if compiled else "pass",
            "detail": f"3 train + 2 eval steps after the first: {len(compiled)} compiles"
                      + (f" ({compiled})" if compiled else ""),
            "lowerings": counter.names}

  def mesh_all_devices(self, shared) -> dict:
    from smd_jax.training import data_parallel  # pylint: disable=g-import-not-at-top
    if self.n == 1:
      return {"status": "skip", "detail": "one local device: nothing to shard over"}
    if "f32" not in shared:
      return {"status": "skip", "detail": "the float32 step on all devices did not run"}
    one = data_parallel.make_mesh(1)
    steps, state = self.build("f32", one)
    new_state, metrics = steps.train_step(state, data_parallel.to_global(self.host_batch(0),
                                                                         one))
    # The one-device step is the reference: the unsharded program.
    want, want_stats = jax.device_get(metrics), data_parallel.fetch(new_state.model_state)
    got, got_stats = shared["f32"]
    bounds = {"loss": F32_LOSS_RTOL, "grad_norm": F32_GRAD_RTOL,
              "batch_norm_statistics": F32_TOL}
    errors = {k: abs(float(got[k]) - float(want[k])) / abs(float(want[k]))
              for k in ("loss", "grad_norm")}
    errors["batch_norm_statistics"] = relative_error(got_stats, want_stats)
    ok = all(errors[k] <= bound for k, bound in bounds.items())
    return {"status": "pass" if ok else "fail",
            "detail": f"{self.n} devices vs 1, relative differences (bound): "
                      + ", ".join(f"{k} {errors[k]:.1e} ({bounds[k]:g})" for k in bounds),
            "relative_errors": errors}


def run_benchmark(args, log) -> dict:
  """benchmarks/run.py's model comparison in bf16 at the benchmark shape."""
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  sides = list(args.sides)
  torch_skipped = None
  if "torch" in sides:
    include, torch_skipped = torch_plan(jax.default_backend())
    if not include:
      sides.remove("torch")
      log(f"PyTorch side skipped: {torch_skipped}")
  result = {"sides": sides, "torch_skipped": torch_skipped, "rows": [], "errors": [],
            "precision": "bf16 (ours) / autocast bf16 (PyTorch)", "batch_size": args.batch_size,
            "size": args.size, "repeats": args.repeats}
  if not sides:
    return result
  for side in sides:  # one side apart from the other: an error loses only its own row
    run_args = run.parse_args(["--only", "models", "--models", args.model, "--encoder",
                               args.encoder, "--precision", "bf16", "--batch-size",
                               str(args.batch_size), "--size", str(args.size), "--repeats",
                               str(args.repeats), "--sides", side])
    try:
      result["rows"] += run.run_models(run_args, log)
    except Exception:  # pylint: disable=broad-except
      log(f"{side} side failed:\n{traceback.format_exc()}")
      result["errors"].append(f"{side}: {traceback.format_exc()}")
  missing = set(sides) - {r["side"] for r in result["rows"]}
  if missing:
    result["errors"].append(f"no result from side(s) {sorted(missing)} (see the log)")
  return result


def render(result: dict) -> str:
  """The Markdown report: device, checks, benchmark table."""
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  d, m = result["device"], result["machine"]
  v = {k: val for k, val in d["versions"].items() if val}
  memory = {r.get("memory_bytes") for r in d["devices"]} - {None}
  memory_text = (f", {max(memory) / 2**30:.0f} GiB each" if memory else "")
  parts = [f"# Accelerator check {result['name']}\n",
           f"{m['date']}; JAX backend **{d['backend']}**: {d['local_device_count']} x "
           f"{d['device_kind']}{memory_text} ({d['process_count']} process(es)); host "
           f"{m['cpu']}, {m['cores']} cores; Python {d['python']}; "
           + ", ".join(f"{k} {val}" for k, val in v.items())
           + f"; wall {result['wall_s']:.0f} s.\n\n`{result['command']}`\n"]
  if result["checks"]:
    lines = ["| check | result | detail | s |", "| --- | --- | --- | ---: |"]
    for c in result["checks"]:
      detail = c.get("detail", "").replace("|", "\\|")  # a literal | inside a cell
      lines.append(f"| {c['name']} | {c['status']} | {detail} | {c['seconds']} |")
    parts.append("## Checks\n\n" + "\n".join(lines) + "\n")
  bench = result["benchmark"]
  if bench:
    text = run.model_table(bench["rows"]) if bench["rows"] else "No rows."
    if bench["torch_skipped"]:
      text += f"\n\nPyTorch side skipped: {bench['torch_skipped']}."
    for error in bench["errors"]:
      text += f"\n\nError: {error.strip().splitlines()[-1]}"
    parts.append(f"## Train and eval throughput, bf16 (ours) vs PyTorch AMP bf16, batch "
                 f"{bench['batch_size']}, {bench['size']}x{bench['size']}\n\n" + text + "\n")
  return "\n".join(parts)


def main(argv=None) -> int:
  args = parse_args(argv)
  if "." not in sys.path and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # configs/ imports `configs.base`
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
  start = time.perf_counter()
  device = device_report()
  name = args.name or f"accelerator-{device['backend']}-{time.strftime('%Y%m%d-%H%M%S')}"
  log(f"JAX backend {device['backend']}: {device['local_device_count']} x "
      f"{device['device_kind']}; jax {device['versions']['jax']}")
  if device["backend"] == "cpu":
    log("JAX runs on the CPU: no accelerator found (install with .[cuda12], .[cuda13] or "
        ".[tpu]); the checks still run, the benchmark is slow here.")
  result = {"name": name, "command": "python -m benchmarks.accelerator_check " + " ".join(
      sys.argv[1:] if argv is None else argv), "args": vars(args),
      "machine": timing.machine(), "device": device, "checks": [], "benchmark": None}
  if not args.skip_checks:
    result["checks"] = _Checks(args, log).run()
  if not args.skip_benchmark:
    result["benchmark"] = run_benchmark(args, log)
  result["wall_s"] = time.perf_counter() - start
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  run.write_result(args.out, name, result, render(result))
  failed = [c["name"] for c in result["checks"] if c["status"] == "fail"]
  if result["benchmark"] and result["benchmark"]["errors"]:
    failed.append("benchmark")
  if failed:
    print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
