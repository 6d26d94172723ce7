"""The benchmark harness: timing statistics, tables, the profiler's HLO join, the
pipeline's tiled source, and the PyTorch side's loss against ours."""

import json
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import build_throughput, curves, device_scaling, fidelity, flax_side, ops
from benchmarks import pipeline, profile_step, run, timing
from smd_jax.training import steps as steps_lib
from tests import torch_reference


def test_repeat_times_only_the_timed_calls():
  calls = []
  t = timing.repeat(lambda: calls.append(1), repeats=5, warmup=2, items=8)
  assert len(calls) == 7 and len(t.times) == 5
  t = timing.Timing([3.0, 1.0, 2.0], items=8)
  assert t.median_s == 2.0 and t.per_s == 4.0 and t.spread == 1.0
  with pytest.raises(ValueError):
    timing.repeat(lambda: None, repeats=0, warmup=0, items=1)


def test_interleave_alternates_sides_round_by_round():
  calls = []
  timings = timing.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                              repeats=3, warmup=1, items=2)
  # Warm-up per side, then rounds a b | b a | a b: neither side always runs first.
  assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
  assert [len(t.times) for t in timings.values()] == [3, 3]
  assert timings["a"].items == 2


def test_interleave_gives_each_side_its_own_times():
  sleeps = {"slow": 3.0, "fast": 1.0}
  now = [0.0]

  def step(name):
    now[0] += sleeps[name]

  with mock.patch.object(timing.time, "perf_counter", lambda: now[0]):
    timings = timing.interleave({name: lambda name=name: step(name) for name in sleeps},
                                repeats=4, warmup=0, items=6)
  assert timings["slow"].times == [3.0] * 4 and timings["fast"].per_s == 6.0


def test_interleave_settles_each_side_on_its_own_untimed_steps():
  calls, now = [], [0.0]

  def step(name):
    calls.append(name)
    now[0] += calls.count(name)  # a side's n-th call takes n seconds

  with mock.patch.object(timing.time, "perf_counter", lambda: now[0]):
    timings = timing.interleave({name: lambda name=name: step(name) for name in "ab"},
                                repeats=2, warmup=0, items=1, settle=1)
  # Each timed call right after an untimed one of the same side: a a b b | b b a a.
  assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"]
  # Only the second call of each pair is timed: the 2nd and 4th of a side.
  assert timings["a"].times == [2.0, 4.0] and timings["b"].times == [2.0, 4.0]
  with pytest.raises(ValueError, match="settle"):
    timing.interleave({"a": lambda: None}, repeats=1, warmup=0, items=1, settle=-1)


def test_model_table_pairs_sides_and_prints_ratios():
  common = dict(model="unet", precision="f32", batch_size=8, size=128)
  rows = [dict(side="flax", train_images_per_s=12.0, eval_images_per_s=30.0,
               train_compile_s=70.0, eval_compile_s=20.0, load=2.0, **common),
          dict(side="torch", train_images_per_s=4.0, eval_images_per_s=20.0,
               train_compile_s=5.0, eval_compile_s=1.0, load=2.5, **common)]
  table = run.model_table(rows)
  assert table.count("\n") == 2  # header, separator, one row
  row = table.splitlines()[-1]
  assert "| 3.00x |" in row and "| 1.50x |" in row and "2.00/2.50" in row
  assert "–" in run.model_table(rows[:1])  # no reference: no ratio


def test_quick_defaults_and_explicit_options():
  args = run.parse_args(["--quick"])
  assert (args.models, args.batch_size, args.size, args.repeats) == (["unet"], 2, 64, 3)
  assert "scaling" not in args.only
  args = run.parse_args(["--quick", "--size", "96", "--scaling"])
  assert args.size == 96 and "scaling" in args.only


def test_run_pair_settles_each_timed_step(monkeypatch):
  calls = []
  runs = {step: (lambda step=step: calls.append(step)) for step in ("train", "eval")}
  monkeypatch.setattr(flax_side, "prepare", lambda model, **kwargs: ({"side": "flax"}, runs))
  args = run.parse_args(["--sides", "flax", "--settle_steps", "2"])
  (row,) = run.run_pair(args, lambda msg: None, "unet", "f32", 2, 64, 3)
  # Per step: 1 warm-up, then 3 rounds of 2 untimed + 1 timed.
  assert calls == ["train"] * 10 + ["eval"] * 10
  assert len(row["train_times"]) == 3 and row["settle_steps"] == 2
  assert run.parse_args([]).settle_steps == 1


# (command, the argparse spelling it took, absl's spelling, parsed values both must give)
SPELLINGS = [
    (run, ["--models", "unet", "deeplabv3", "--batch-size", "4", "--no-eval",
           "--torch-channels-last", "off", "--scaling-batches", "1", "3"],
     ["--models=unet", "--models=deeplabv3", "--batch_size=4", "--no_eval",
      "--torch_channels_last=off", "--scaling_batches=1", "--scaling_batches=3"],
     dict(models=["unet", "deeplabv3"], batch_size=4, no_eval=True, torch_channels_last="off",
          scaling_batches=[1, 3], no_train=False)),
    (ops, ["--batch-size", "2", "--groups", "bn", "kxk"],
     ["--batch_size=2", "--groups=bn", "--groups=kxk"], dict(batch_size=2, groups=["bn", "kxk"])),
    (profile_step, ["--batch-size", "2", "--precision", "bf16", "--step", "eval"],
     ["--batch_size=2", "--precision=bf16", "--step=eval"],
     dict(batch_size=2, precision="bf16", size=64, step="eval")),
    (build_throughput, ["--workers", "1", "4", "--decode-only"],
     ["--workers=1", "--workers=4", "--decode_only"], dict(workers=[1, 4], decode_only=True)),
    (fidelity, ["--only", "resnet50", "unet", "--json", "o.jsonl"],
     ["--only=resnet50", "--only=unet", "--json=o.jsonl"],
     dict(only=["resnet50", "unet"], json="o.jsonl", table=None)),
    (device_scaling, ["--devices", "1,2", "--batch", "4"], ["--devices=1,2", "--batch=4"],
     dict(devices="1,2", batch=4, steps=5)),
]


@pytest.mark.parametrize("command, argparse_argv, absl_argv, want", SPELLINGS,
                         ids=[c.__name__.split(".")[-1] for c, *_ in SPELLINGS])
def test_commands_take_argparse_and_absl_spellings(command, argparse_argv, absl_argv, want):
  """Each benchmark's former argparse command line still parses, to the same values as
  the absl spelling (parse only: nothing is run)."""
  for argv in (argparse_argv, absl_argv):
    args = vars(command.parse_args(argv))
    assert {k: args[k] for k in want} == want, argv


def test_commands_report_bad_flags_in_one_line(capsys):
  for command in (run, ops, profile_step, build_throughput, fidelity, device_scaling):
    for argv in (["--batch-sise=2"], ["unexpected"]):
      with pytest.raises(SystemExit) as exit_:
        command.parse_args(argv)
      err = capsys.readouterr().err
      assert exit_.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, (
          command.__name__, err)


def test_run_refuses_a_path_as_name_before_measuring(capsys):
  with pytest.raises(SystemExit) as exit_:
    run.parse_args(["--name", "benchmarks/results/x"])
  err = capsys.readouterr().err
  assert exit_.value.code == 1 and err.startswith("error: ") and "--out" in err, err
  assert run.parse_args(["--name", "cpu-idle-x"]).name == "cpu-idle-x"


def test_curves_cli_takes_workdirs_and_several_keys(tmp_path, capsys):
  for name, losses in (("a", (2.0, 1.0)), ("b", (2.5, 0.5))):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "train/loss": loss, "x": 1.0}) + "\n"
        for step, loss in zip((10, 20), losses)))
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert curves.main(["--keys", "x"]) == 1  # no workdirs
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert curves.main([a, b, "--keys", "train/loss", "x"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "| step | train/loss a | train/loss b | x a | x b | train/loss diff | x diff |"
  assert lines[3] == "| 20 | 1.0000 | 0.5000 | 1.0000 | 1.0000 | -0.5000 | +0.0000 |"


def test_profile_join_categorizes_a_real_program():
  def f(x, w1, w3):
    y = jax.lax.conv_general_dilated(x, w1, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.lax.conv_general_dilated(y, w3, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jnp.tanh(y))

  args = (jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 8)), jnp.ones((3, 3, 8, 8)))
  compiled = jax.jit(jax.grad(f, argnums=(1, 2))).lower(*args).compile()
  instructions, computations = profile_step.parse_hlo(compiled.as_text())
  categories = {profile_step.categorize(line, computations) for line in instructions.values()}
  assert "forward: conv kxk" in categories, categories
  # XLA:CPU turns a 1x1 convolution into a dot; other backends may keep the conv.
  assert categories & {"forward: conv 1x1",
                       "forward: dot (1x1 convs: XLA rewrites them as dots)"}, categories
  assert any(c.startswith("backward: conv") for c in categories), categories
  # An eval step's instructions are all 'eval: ...' (no gradient to tell apart).
  forward = jax.jit(f).lower(*args).compile()
  instructions, computations = profile_step.parse_hlo(forward.as_text())
  categories = {profile_step.categorize(line, computations, "eval")
                for line in instructions.values()}
  assert "eval: conv kxk" in categories and all(c.startswith("eval: ") for c in categories)


def test_tiled_source_repeats_examples():
  tiled = pipeline.Tiled(["a", "b", "c"], 7)
  assert len(tiled) == 7 and [tiled[i] for i in range(7)] == list("abcabca")


def test_torch_loss_equals_our_loss():
  """Both sides optimise the same objective: the PyTorch side's masked L1 on sigmoid
  depth + 0.07 CE equals steps.total_loss of the 2-head config on the same logits."""
  torch = torch_reference.import_torch()  # skips, or fails under SMD_REQUIRE_TORCH_REFERENCE
  from benchmarks import torch_side
  from smd_jax import tasks as tasks_lib

  batch = flax_side.random_batch(2, 8, seed=3)
  rng = np.random.default_rng(0)
  depth_logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  sem_logits = rng.normal(size=(2, 8, 8, 40)).astype(np.float32)
  config = flax_side.make_config("unet_2head", encoder="efficientnet_b4", batch_size=2, size=8,
                                 precision="f32")
  task_objs = tasks_lib.build_tasks(config.tasks)
  ours, _ = steps_lib.total_loss(
      {"depth": jax.nn.sigmoid(depth_logits), "semantic": jnp.asarray(sem_logits)},
      {k: jnp.asarray(v) for k, v in batch.items()}, task_objs, config.tasks)
  theirs = torch_side.reference_loss(
      torch, {"depth": torch.from_numpy(depth_logits.transpose(0, 3, 1, 2)),
              "semantic": torch.from_numpy(sem_logits.transpose(0, 3, 1, 2))},
      torch.from_numpy(batch["depth"]), torch.from_numpy(batch["semantic"].astype(np.int64)))
  assert math.isclose(float(ours), float(theirs), rel_tol=1e-5)
