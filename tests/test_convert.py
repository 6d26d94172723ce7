"""Weight import (smd_jax.convert): name maps, layout transforms, checks, the command
line and config.init_from.

State dicts in timm's layout are made from our own (tiny) encoder and written with
``safetensors.numpy``; the CLI test on a widened ImageNet encoder needs PyTorch (it
skips with the reason where torch is absent). Numerical fidelity against the PyTorch
originals (``*_matches_*``) is in tests/test_convert_fidelity.py.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors import numpy as st_numpy

from smd_jax import convert
from smd_jax.convert import __main__ as cli, core, fidelity, io, names
from smd_jax.models import build_model, efficientnet, registry
from tests import torch_reference

TINY = "tiny_efficientnet"  # the EfficientNet class at small multipliers (as test_train)
TOLERANCE = 1e-4


@pytest.fixture
def tiny(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, TINY,
                      functools.partial(efficientnet.EfficientNet, 0.25, 0.1))
  return TINY


def _tiny_model_config(in_channels=3, heads=None, decoder="unet"):
  return ml_collections.ConfigDict(dict(
      encoder=TINY, decoder=decoder, in_channels=in_channels, dtype="float32",
      decoder_channels=(16, 8, 8, 8, 8) if decoder == "unet" else 16,
      heads=heads or {"depth": {"num_outputs": 1, "activation": "sigmoid"}}))


def _values(module) -> dict:
  return {p: np.asarray(v.get_value()) for p, v in core.model_variables(module).items()}


def timm_layout(encoder, seed=0) -> dict[str, np.ndarray]:
  """Random weights for ``encoder`` under timm's ImageNet state-dict names (torch
  layouts), with a classifier the encoder lacks and num_batches_tracked counters."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, variable in core.model_variables(encoder).items():
    *module, leaf = [str(p) for p in path]
    value = rng.normal(size=variable.get_value().shape).astype(np.float32)
    if leaf == "kernel":
      # HWIO -> OIHW (contiguous: safetensors.numpy.save_file writes raw buffers)
      leaf, value = "weight", np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    elif leaf == "var":
      leaf, value = "running_var", np.abs(value) + 0.5
    else:
      leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean"}[leaf]
    out[".".join(module + [leaf])] = value
    if leaf == "running_mean":
      out[".".join(module + ["num_batches_tracked"])] = np.array(3, np.int64)
  out.update({"conv_head.weight": np.zeros((64, 8, 1, 1), np.float32),
              "bn2.weight": np.ones(64, np.float32), "bn2.running_var": np.ones(64, np.float32),
              "classifier.weight": np.zeros((10, 64), np.float32),
              "classifier.bias": np.zeros(10, np.float32)})
  return out


def _tiny_encoder(in_channels=3, seed=0):
  return registry.ENCODERS[TINY](in_channels=in_channels, rngs=nnx.Rngs(seed))


# --------------------------------------------------------------- layouts and name maps


def test_layout_transforms():
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(8, 3, 3, 5)).astype(np.float32)  # O, I, kH, kW
  bn = {leaf: rng.normal(size=8).astype(np.float32)
        for leaf in ("weight", "bias", "running_mean", "running_var")}
  state_dict = {"conv.weight": conv, "conv.bias": bn["bias"],
                **{f"bn.{k}": v for k, v in bn.items()},
                "bn.num_batches_tracked": np.array(5)}
  converted = core.convert_state_dict(state_dict, tuple)
  np.testing.assert_array_equal(converted.arrays[("conv", "kernel")],
                                conv.transpose(2, 3, 1, 0))  # HWIO
  assert converted.arrays[("conv", "kernel")].shape == (3, 5, 3, 8)
  np.testing.assert_array_equal(converted.arrays[("conv", "bias")], bn["bias"])
  for torch_leaf, ours in [("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                           ("running_var", "var")]:
    np.testing.assert_array_equal(converted.arrays[("bn", ours)], bn[torch_leaf])
  assert converted.sources[("bn", "var")] == "bn.running_var"
  assert not converted.unknown and not converted.ignored  # counters: dropped silently
  # Copies: later in-place changes of the source (torch buffers) do not leak in.
  bn["running_mean"] += 1
  assert not np.array_equal(converted.arrays[("bn", "mean")], bn["running_mean"])
  # A Linear weight (2-D) has no place in our models.
  assert core.convert_state_dict({"fc.weight": np.zeros((2, 3))}, tuple).unknown == ["fc.weight"]


SMP = names.smp_model("depth")
SEMANTIC_MD = names.semantic_md()


@pytest.mark.parametrize("name_map,name,ndim,want", [
    # timm / torchvision ImageNet classifiers -> encoder; classifier ignored
    (names.timm_encoder("efficientnet_b4"), "blocks.1.0.conv_pw.weight", 4,
     "encoder.blocks.1.0.conv_pw.kernel"),
    (names.timm_encoder("efficientnet_b4"), "blocks.1.0.bn2.running_var", 1,
     "encoder.blocks.1.0.bn2.var"),
    (names.timm_encoder("efficientnet_b4"), "blocks.0.0.se.conv_reduce.bias", 1,
     "encoder.blocks.0.0.se.conv_reduce.bias"),
    (names.timm_encoder("efficientnet_b4"), "conv_head.weight", 4, None),
    (names.timm_encoder("efficientnet_b4"), "bn2.bias", 1, None),
    (names.timm_encoder("efficientnet_b4"), "classifier.bias", 1, None),
    (names.timm_encoder("resnet50"), "layer1.0.downsample.1.running_mean", 1,
     "encoder.layer1.0.downsample.1.mean"),
    (names.timm_encoder("resnet50"), "fc.weight", 2, None),
    # smp
    (SMP, "encoder.model.conv_stem.weight", 4, "encoder.conv_stem.kernel"),
    (SMP, "encoder.layer4.2.bn3.weight", 1, "encoder.layer4.2.bn3.scale"),
    (SMP, "decoder.blocks.4.conv2.1.running_mean", 1, "decoders.depth.blocks.4.conv2.bn.mean"),
    (SMP, "decoder.0.convs.0.0.weight", 4, "decoders.depth.aspp.convs.0.conv.kernel"),
    (SMP, "decoder.0.convs.2.1.bias", 1, "decoders.depth.aspp.convs.2.bn.bias"),
    (SMP, "decoder.0.convs.4.1.weight", 4, "decoders.depth.aspp.convs.4.conv.kernel"),
    (SMP, "decoder.0.convs.4.2.weight", 1, "decoders.depth.aspp.convs.4.bn.scale"),
    (SMP, "decoder.0.project.1.running_var", 1, "decoders.depth.aspp.project.bn.var"),
    (SMP, "decoder.1.weight", 4, "decoders.depth.conv.kernel"),
    (SMP, "decoder.2.weight", 1, "decoders.depth.bn.scale"),
    (SMP, "segmentation_head.0.bias", 1, "heads.depth.conv.bias"),
    # semantic_md: multi-task, wrapped single-task, semantic convolution, unused parts
    (SEMANTIC_MD, "decoder_semantic.blocks.0.conv1.0.weight", 4,
     "decoders.semantic.blocks.0.conv1.conv.kernel"),
    (SEMANTIC_MD, "head_contours.0.bias", 1, "heads.contours.conv.bias"),
    (SEMANTIC_MD, "head_sobel.0.weight", 4, "heads.depth_edges.conv.kernel"),
    (SEMANTIC_MD, "encoder.model.blocks.3.1.bn1.weight", 1, "encoder.blocks.3.1.bn1.scale"),
    (SEMANTIC_MD, "model.decoder.blocks.0.conv1.1.weight", 1,
     "decoders.depth.blocks.0.conv1.bn.scale"),
    (SEMANTIC_MD, "model.segmentation_head.0.weight", 4, "heads.depth.conv.kernel"),
    (SEMANTIC_MD, "pretrained_model.encoder.model.conv_stem.weight", 4, None),
    (SEMANTIC_MD, "test.decoder.blocks.0.conv1.0.weight", 4, None),
    (SEMANTIC_MD, "convolution.0.weight", 4, "input_block.conv_in.kernel"),
    (SEMANTIC_MD, "convolution.2.block.0.1.running_var", 1, "input_block.mbconv.bn1.var"),
    (SEMANTIC_MD, "convolution.2.block.2.fc1.weight", 4,
     "input_block.mbconv.se.conv_reduce.kernel"),
    (SEMANTIC_MD, "convolution.2.block.3.0.weight", 4, "input_block.mbconv.conv_pwl.kernel"),
    (SEMANTIC_MD, "convolution.4.running_mean", 1, "input_block.bn_out.mean"),
])
def test_name_maps(name_map, name, ndim, want):
  converted = core.convert_state_dict({name: np.zeros((1,) * ndim, np.float32)}, name_map)
  if want is None:
    assert converted.ignored == [name] and not converted.arrays
  else:
    assert [core.dotted(p) for p in converted.arrays] == [want]


@pytest.mark.parametrize("name_map,name", [
    (SMP, "decoder.7.weight"), (SMP, "decoder.blocks.0.conv1.2.weight"),
    (SMP, "segmentation_head.2.weight"), (SMP, "aux.weight"),
    (SEMANTIC_MD, "convolution.2.block.9.0.weight"), (SEMANTIC_MD, "weight"),
])
def test_unknown_names_are_reported(name_map, name):
  assert core.convert_state_dict({name: np.zeros((1, 1, 1, 1))}, name_map).unknown == [name]


# ----------------------------------------------------------------- checks and writing


def test_encoder_conversion_widens_the_stem(tiny):
  state_dict = timm_layout(_tiny_encoder())
  encoder, report, arch = convert.convert_encoder(state_dict, tiny, in_channels=5, seed=3)
  assert arch == tiny
  fresh = _values(_tiny_encoder(in_channels=5, seed=3))
  got = _values(encoder)
  stem = got[("conv_stem", "kernel")]
  assert stem.shape[2] == 5
  np.testing.assert_array_equal(stem[:, :, :3], state_dict["conv_stem.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stem[:, :, 3:], fresh[("conv_stem", "kernel")][:, :, 3:])
  np.testing.assert_array_equal(got[("blocks", 1, 0, "bn3", "var")],
                                state_dict["blocks.1.0.bn3.running_var"])
  assert report.widened == ("conv_stem", "kernel") and not report.kept
  assert sorted(report.ignored) == ["bn2.running_var", "bn2.weight", "classifier.bias",
                                    "classifier.weight", "conv_head.weight"]


def test_every_problem_is_listed_and_nothing_written(tiny):
  encoder = _tiny_encoder()
  before = _values(encoder)
  state_dict = timm_layout(encoder)
  del state_dict["blocks.1.0.bn1.running_mean"]
  state_dict["blocks.9.0.conv_pw.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  state_dict["blocks.0.0.conv_pw.weight"] = np.zeros((9, 8, 1, 1), np.float32)
  state_dict["blocks.0.0.foo.weight.extra"] = np.zeros(3, np.float32)
  with pytest.raises(convert.ConversionError) as error:
    converted = core.convert_state_dict(state_dict, names.timm_encoder(tiny))
    core.assign(encoder, converted.sub(("encoder",)))
  message = str(error.value)
  assert "1 unknown, 1 unexpected, 1 mismatched, 1 missing" in message
  assert "blocks.0.0.foo.weight.extra" in message
  assert "blocks.9.0.conv_pw.weight -> blocks.9.0.conv_pw.kernel" in message
  assert "blocks.0.0.conv_pw.weight -> blocks.0.0.conv_pw.kernel (1, 1, 8, 9) vs model" in message
  assert "missing (in the model, not in the weights): blocks.1.0.bn1.mean" in message
  after = _values(encoder)
  assert all(np.array_equal(before[p], after[p]) for p in before)


def test_one_problem_is_one_line(tiny):
  state_dict = timm_layout(_tiny_encoder(in_channels=4))
  # 4 input channels into a 3-channel stem: only widening is allowed, not narrowing.
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_encoder(state_dict, tiny, in_channels=3)
  message = str(error.value)
  assert "\n" not in message
  assert "shape mismatch: conv_stem.weight -> conv_stem.kernel (3, 3, 4, 8) vs model " \
         "(3, 3, 3, 8)" in message


def test_read_state_dict_formats(tmp_path, monkeypatch):
  weights = {"a.weight": np.ones((2, 3, 1, 1), np.float32), "a.num_batches_tracked":
             np.array(4, np.int64), "b.bias": np.arange(3, dtype=np.float16)}
  path = str(tmp_path / "w.safetensors")
  st_numpy.save_file(weights, path)
  got = io.read_state_dict(path)
  assert got["b.bias"].dtype == np.float32 and got["a.num_batches_tracked"].dtype == np.int64
  np.testing.assert_array_equal(got["b.bias"], [0, 1, 2])
  # nn.DataParallel prefixes are dropped
  st_numpy.save_file({"module." + k: v for k, v in weights.items()}, path)
  assert sorted(io.read_state_dict(path)) == sorted(weights)
  with pytest.raises(ValueError, match="expected .safetensors"):
    (tmp_path / "w.npz").write_bytes(b"")
    io.read_state_dict(str(tmp_path / "w.npz"))
  (tmp_path / "w.pth").write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(ImportError, match=r"torch extra.*safetensors"):
    io.read_state_dict(str(tmp_path / "w.pth"))


def test_infer_model_config():
  heads = {"depth": {"num_outputs": 1, "activation": "sigmoid"},
           "semantic": {"num_outputs": 40, "activation": "identity"}}
  for config in (
      ml_collections.ConfigDict(dict(encoder="efficientnet_b2", decoder="unet", in_channels=7,
                                     heads=heads)),
      ml_collections.ConfigDict(dict(encoder="resnet50", decoder="deeplabv3", in_channels=43,
                                     input_block="semantic_conv", heads=heads))):
    model = nnx.eval_shape(lambda c=config: build_model(c, rngs=nnx.Rngs(0)))
    arrays = {p: np.zeros(v.get_value().shape, np.float32)
              for p, v in core.model_variables(model).items()}
    inferred = convert.infer_model_config(convert.Converted(arrays, {}), config.encoder)
    assert inferred["decoder"] == config.decoder
    assert inferred["in_channels"] == config.in_channels
    assert inferred["input_block"] == config.get("input_block")
    assert inferred["heads"] == heads
    assert inferred["decoder_channels"] == ((256, 128, 64, 32, 16) if config.decoder == "unet"
                                            else 256)
    assert convert.infer_arch(convert.Converted(arrays, {}).sub(("encoder",)).arrays) == \
        config.encoder


# ---------------------------------------------------------- command line and init_from


def test_cli_round_trip_and_init_from(tiny, tmp_path, capsys):
  state_dict = timm_layout(_tiny_encoder(), seed=1)
  weights = str(tmp_path / "model.safetensors")
  st_numpy.save_file(state_dict, weights)
  out = str(tmp_path / "converted")
  assert cli.main(["--from", "timm", weights, "--out", out]) == 0  # --arch inferred
  printed = capsys.readouterr().out
  assert f"timm {tiny} (encoder)" in printed and "ignored 5" in printed
  with open(os.path.join(out, io.METADATA_FILE)) as f:
    meta = json.load(f)
  assert meta["arch"] == tiny and meta["scope"] == "encoder" and meta["in_channels"] == 3
  assert meta["sha256"] == io.sha256(weights) and "classifier.weight" in meta["ignored"]
  arrays, _ = io.load_converted(out)
  direct = core.convert_state_dict(state_dict, names.timm_encoder(tiny)).arrays
  assert set(arrays) == set(direct)
  assert all(np.array_equal(arrays[p], direct[p]) for p in direct)

  # init_from into a model with 3 + 2 input channels: encoder from the checkpoint
  # (stem widened), decoder and head as initialised.
  model = build_model(_tiny_model_config(in_channels=5), rngs=nnx.Rngs(7))
  fresh = _values(model)
  report = convert.load_pretrained(model, out, encoder=tiny)
  got = _values(model)
  assert report.widened == ("encoder", "conv_stem", "kernel")
  stem = got[("encoder", "conv_stem", "kernel")]
  np.testing.assert_array_equal(stem[:, :, :3], direct[("encoder", "conv_stem", "kernel")])
  np.testing.assert_array_equal(stem[:, :, 3:], fresh[("encoder", "conv_stem", "kernel")][:, :, 3:])
  for path, value in got.items():
    if path[0] == "encoder" and path != ("encoder", "conv_stem", "kernel"):
      np.testing.assert_array_equal(value, direct[path])
    elif path[0] != "encoder":
      np.testing.assert_array_equal(value, fresh[path])
  assert {p[0] for p in report.kept} == {"decoders", "heads"}

  with pytest.raises(convert.ConversionError, match="holds tiny_efficientnet weights, but the "
                                                    "model's encoder is efficientnet_b2"):
    convert.load_pretrained(model, out, encoder="efficientnet_b2")
  assert cli.main(["--from", "timm", "--arch", "resnet50", weights, "--out", out]) == 1
  assert "do not fit the model" in capsys.readouterr().err


def test_whole_model_cli_from_semantic_md_layout(tiny, tmp_path, capsys):
  """A 2-head model saved under semantic_md names (MultiLossModel layout, plus the
  unused ``test.*`` module of its 3-head sibling) -> CLI -> init_from."""
  heads = {"depth": {"num_outputs": 1, "activation": "sigmoid"},
           "semantic": {"num_outputs": 40, "activation": "identity"}}
  model = build_model(_tiny_model_config(heads=heads), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  smp_names = {("conv",): "0", ("bn",): "1"}
  state_dict = {}
  for path, variable in core.model_variables(model).items():
    value = rng.normal(size=variable.get_value().shape).astype(np.float32)
    *module, leaf = [str(p) for p in path]
    if leaf == "kernel":
      value = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if leaf == "var":
      value = np.abs(value) + 0.5
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
            "var": "running_var"}.get(leaf, leaf)
    if module[0] == "encoder":
      module = ["encoder", "model"] + module[1:]
    elif module[0] == "decoders":  # decoders.<t>.blocks.i.convN.conv|bn
      module = [f"decoder_{module[1]}"] + module[2:-1] + [smp_names[(module[-1],)]]
    else:  # heads.<t>.conv
      module = [f"head_{module[1]}", "0"]
    state_dict[".".join(module + [leaf])] = value
  state_dict["test.segmentation_head.0.weight"] = np.zeros((1, 16, 3, 3), np.float32)
  weights = str(tmp_path / "two_head.safetensors")
  st_numpy.save_file(state_dict, weights)
  out = str(tmp_path / "converted")
  assert cli.main(["--from", "semantic_md", "--arch", tiny, weights, "--out", out]) == 0
  assert "heads depth:1, semantic:40" in capsys.readouterr().out
  meta = io.read_metadata(out)
  assert meta["scope"] == "model" and meta["model"]["decoder_channels"] == [16, 8, 8, 8, 8]
  assert meta["ignored"] == ["test.segmentation_head.0.weight"]

  target = build_model(_tiny_model_config(heads=heads), rngs=nnx.Rngs(2))
  report = convert.load_pretrained(target, out)
  assert not report.kept and report.widened is None
  got = _values(target)
  kernel = state_dict["decoder_semantic.blocks.2.conv1.0.weight"].transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(got[("decoders", "semantic", "blocks", 2, "conv1", "conv",
                                     "kernel")], kernel)
  np.testing.assert_array_equal(got[("heads", "depth", "conv", "bias")],
                                state_dict["head_depth.0.bias"])
  # A 1-head config cannot take a 2-head checkpoint: the extra head is named.
  one_head = build_model(_tiny_model_config(), rngs=nnx.Rngs(2))
  with pytest.raises(convert.ConversionError, match=r"(?s)52 unexpected.*heads\.semantic\.\* \(2\)"):
    convert.load_pretrained(one_head, out)


def test_maybe_init_from_only_on_fresh_runs(tiny, tmp_path):
  out = str(tmp_path / "converted")
  encoder = _tiny_encoder()
  arrays = {("encoder",) + p: v for p, v in _values(encoder).items()}
  io.save_converted(out, arrays, {"arch": tiny, "scope": "encoder"})
  config = ml_collections.ConfigDict({"init_from": None, "model": _tiny_model_config()})
  model = build_model(config.model, rngs=nnx.Rngs(5))
  assert convert.maybe_init_from(model, config, str(tmp_path / "run")) is None  # not set
  config.init_from = out
  assert convert.maybe_init_from(model, config, str(tmp_path / "run")).kept
  np.testing.assert_array_equal(_values(model)[("encoder", "bn1", "var")],
                                arrays[("encoder", "bn1", "var")])
  os.makedirs(tmp_path / "resumed" / "checkpoints" / "10")
  with open(tmp_path / "resumed" / "checkpoints" / "10" / "_CHECKPOINT_METADATA", "w") as f:
    f.write("{}")
  assert convert.maybe_init_from(model, config, str(tmp_path / "resumed")) is None


@pytest.mark.parametrize("spelling", [["--in-channels", "43"], ["--in_channels=43"],
                                      ["--in_channels", "43"], ["--in-channels=43"]])
def test_cli_takes_both_spellings_of_in_channels(spelling):
  """The argparse spelling (--in-channels) and absl's (--in_channels) set the same flag;
  flags may come after the positional weights file (parse only, nothing converted)."""
  from smd_jax import cli as command_line  # pylint: disable=g-import-not-at-top
  flag_values, args = command_line.parse_argv(
      cli.define_flags, ["--from", "timm", "w.safetensors"] + spelling + ["--out", "o"],
      usage=cli.__doc__)
  assert args == ["w.safetensors"]
  assert (flag_values["from"].value, flag_values.in_channels, flag_values.out) == ("timm", 43, "o")


def test_cli_bad_flags_are_one_line_errors(tmp_path, capsys):
  out = str(tmp_path / "never")
  with pytest.raises(SystemExit) as exit_:
    cli.main(["--from", "keras", "w.safetensors", "--out", out])
  err = capsys.readouterr().err
  assert exit_.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1
  assert "timm" in err  # names the choices
  for argv in (["--from", "timm", "--out", out], ["--from", "timm", "a", "b", "--out", out]):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
  assert not os.path.exists(out)


def test_cli_widened_imagenet_encoder_matches_timm(tmp_path):
  """timm classifier -> safetensors -> CLI -> init_from into a 3 + 1 channel model:
  with the extra channel zero, the encoder computes what timm's does on RGB."""
  torch, _, _ = torch_reference.import_reference()
  reference, classifier = fidelity.timm_reference("efficientnet_b2")
  from safetensors import torch as st_torch  # pylint: disable=g-import-not-at-top
  weights = str(tmp_path / "b2.safetensors")
  st_torch.save_file(classifier.state_dict(), weights)
  out = str(tmp_path / "converted")
  assert cli.main(["--from", "timm", "--arch", "efficientnet_b2", weights, "--out", out]) == 0

  config = ml_collections.ConfigDict(dict(encoder="efficientnet_b2", decoder="unet",
                                          in_channels=4, heads={"depth": {"num_outputs": 1}}))
  model = build_model(config, rngs=nnx.Rngs(0))
  convert.load_pretrained(model, out, encoder="efficientnet_b2")
  model.eval()
  x = np.random.default_rng(1).normal(size=(2, 64, 96, 4)).astype(np.float32)
  x[..., 3] = 0.0
  with torch.no_grad():
    want = [f.numpy().transpose(0, 2, 3, 1)
            for f in reference(torch.from_numpy(x[..., :3].transpose(0, 3, 1, 2).copy()))]
  got = nnx.jit(lambda m, x: m.encoder(x))(model, x)
  assert max(float(np.max(np.abs(np.asarray(g) - w))) for g, w in zip(got, want)) <= TOLERANCE


def test_the_package_exports_every_public_name_lazily():
  """`smd_jax.convert`'s names resolve on first use (so that the package imports no
  jax), each to its submodule's object."""
  assert set(convert.__all__) == set(convert._DEFINED_IN) | {"hub"}
  for name in convert.__all__:
    value = getattr(convert, name)
    if name != "hub":
      assert value is getattr(getattr(convert, convert._DEFINED_IN[name]), name), name
  # In a fresh process: the package alone imports no jax, and its submodules are
  # attributes of it as before (`convert.core`), imported when first named.
  probe = ("import sys, smd_jax.convert as c; assert 'jax' not in sys.modules; "
           "print(*(getattr(c, m).__name__ for m in ('hub', *c._SOURCES)))")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  assert out == [f"smd_jax.convert.{m}" for m in ("hub", *convert._SOURCES)]
  with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
    getattr(convert, "nonexistent")
