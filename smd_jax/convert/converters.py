"""Converters by source, model inference, and loading converted weights (init_from).

Sources (``--from`` of the command line):

* ``timm`` / ``torchvision``: an ImageNet classifier's state dict for one of our
  encoders (``efficientnet_b2/b3/b4``, ``resnet50``) -> the encoder only; the
  classifier is ignored and the first conv may be widened to 3 + k input channels.
* ``smp``: a whole smp 0.3.3 ``Unet`` / ``DeepLabV3`` (1 task: ``depth``).
* ``semantic_md``: a whole model of the paper's reference code, single- or multi-task
  (see `names.py` for its layouts and task names).

Whole models are rebuilt from the weights themselves (`infer_model_config`: tasks and
their output channels from the heads, UNet or DeepLabV3 from the decoder names, input
channels from the first conv, the semantic-convolution block when present), so a
published checkpoint needs no config to be converted.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Any, Mapping, Sequence

import ml_collections
from absl import logging
import jax
import numpy as np
from flax import nnx

from smd_jax import output_files
from smd_jax.convert import io, names
from smd_jax.convert.core import (AssignReport, ConversionError, Converted, Path, assign,
                                  convert_state_dict, dotted, model_variables, stem_path)
from smd_jax.errors import UserError
from smd_jax.models import registry
from smd_jax.models.model import RGB_CHANNELS

ENCODER_SOURCES = ("timm", "torchvision")
MODEL_SOURCES = ("smp", "semantic_md")
SOURCES = ENCODER_SOURCES + MODEL_SOURCES
# What `maybe_init_from` loaded, next to the run's config.json.
INIT_FROM_FILE = "init_from.json"


def name_map(source: str, arch: str | None = None,
             tasks: Mapping[str, str] | None = None) -> names.NameMap:
  """The name map of a source (``arch`` is needed for encoder sources)."""
  if source in ENCODER_SOURCES:
    if arch is None:
      raise ValueError(f"--from {source} needs the encoder name (--arch)")
    return names.timm_encoder(arch)
  if source == "smp":
    return names.smp_model((tasks or {}).get("depth", "depth"))
  if source == "semantic_md":
    merged = {**names.SEMANTIC_MD_TASKS, **(tasks or {})}
    return names.semantic_md(merged, single_task=merged.get("depth", "depth"))
  raise ValueError(f"Unknown source {source!r}; known: {list(SOURCES)}")


def _shapes(variables) -> dict[Path, tuple[int, ...]]:
  return {p: tuple(v.get_value().shape) for p, v in variables.items()}


def _encoder_shapes(arch: str, in_channels: int) -> Mapping[Path, tuple[int, ...]]:
  """Variable paths and shapes of the registered encoder ``arch`` (read-only)."""
  return _builder_shapes(registry.ENCODERS[arch], in_channels)


@functools.lru_cache(maxsize=None)
def _builder_shapes(builder, in_channels: int) -> Mapping[Path, tuple[int, ...]]:
  # Cached per builder, not per name (a name may be registered anew): `infer_arch`
  # builds every registered EfficientNet abstractly, ~0.5-1 s each.
  abstract = nnx.eval_shape(lambda: builder(in_channels=in_channels, rngs=nnx.Rngs(0)))
  return types.MappingProxyType(_shapes(model_variables(abstract)))


def infer_arch(encoder_arrays: Mapping[Path, np.ndarray]) -> str:
  """The registered encoder whose variables have exactly these paths and shapes.
  ``encoder_arrays`` are relative to the encoder."""
  want = {p: tuple(a.shape) for p, a in encoder_arrays.items()}
  for arch in sorted(registry.ENCODERS):
    try:
      stem = (names.STEM[names.family(arch)], "kernel")
    except ValueError:
      continue
    if stem not in want:  # another family
      continue
    # Cheap first: the RGB encoder's shapes (cached), the stem aside; then exactly.
    rgb = _encoder_shapes(arch, RGB_CHANNELS)
    if (rgb.keys() == want.keys()
        and all(rgb[p] == want[p] for p in want if p != stem)
        and _encoder_shapes(arch, want[stem][2]) == want):
      return arch
  raise ConversionError("The encoder weights match none of the registered encoders "
                        f"{sorted(registry.ENCODERS)}; pass --arch to see the differences")


def convert_encoder(state_dict: Mapping[str, np.ndarray], arch: str | None = None, *,
                    source: str = "timm", in_channels: int = RGB_CHANNELS, seed: int = 0
                    ) -> tuple[nnx.Module, AssignReport, str]:
  """A timm / torchvision ImageNet state dict -> (our encoder holding the weights, the
  report, the encoder name).

  ``in_channels`` > 3 widens the first conv: its RGB filters are the checkpoint's, the
  extra input channels keep the encoder's own initialisation drawn from ``seed``
  (timm's N(0, sqrt(2 / fan_out)) for EfficientNet, kaiming-normal for ResNet).
  """
  if arch is None:
    probe = convert_state_dict(state_dict, names.timm_encoder("efficientnet"))
    if not any(p[:2] == ("encoder", "conv_stem") for p in probe.arrays):
      probe = convert_state_dict(state_dict, names.timm_encoder("resnet"))
    arch = infer_arch(probe.sub(("encoder",)).arrays)
  converted = convert_state_dict(state_dict, name_map(source, arch)).sub(("encoder",))
  encoder = registry.lookup(registry.ENCODERS, arch, "encoder")(
      in_channels=in_channels, rngs=nnx.Rngs(seed))
  report = assign(encoder, converted, widen=stem_path(encoder),
                  what=f"{source} weights for {arch}")
  return encoder, report, arch


# Head activations are not in the weights. Defaults by the head's state-dict layout:
# the authors' single-task smp models (`segmentation_head.*`, also inside their input
# wrappers) were built with activation="sigmoid"; their multi-task models
# (`head_<task>.*`: MultiLossModel, TripleLossModel, SobelLossModel, ContourModel) with
# activation=None on every head, depth included. Tasks not listed: logits.
HEAD_ACTIVATIONS: dict[str, dict[str, str]] = {
    "segmentation_head": {"depth": "sigmoid"},
    "head_": {},
}


def _head_layout(source: str) -> str:
  """'head_' for a semantic_md multi-task head name, else 'segmentation_head'."""
  module = source.split(".")[-3] if source.count(".") >= 2 else ""
  return "head_" if module.startswith("head_") else "segmentation_head"


def infer_model_config(converted: Converted, arch: str,
                       activations: Mapping[str, str] | None = None) -> dict[str, Any]:
  """The `build_model` config of a whole converted model (see the module docstring).

  Head activations are not in the weights: ``activations`` (task -> name), else the
  default of the head's layout (`HEAD_ACTIVATIONS`: 'sigmoid' depth for smp models,
  no activation for semantic_md multi-task heads) and 'identity' (logits) for the
  rest. The head kernel size is read off the weights (semantic_md's multi-task
  DeepLabV3 heads are 3x3, smp's DeepLabV3 head 1x1).
  """
  activations = dict(activations or {})
  arrays = converted.arrays
  tasks = sorted({p[1] for p in arrays if p[0] == "heads"})
  if not tasks:
    raise ConversionError("No heads in the weights (expected segmentation_head.* or "
                          "head_<task>.*): is this a whole smp / semantic_md model?")
  heads, decoders, kernel_sizes = {}, {}, set()
  for task in tasks:
    path = ("heads", task, "conv", "kernel")
    kernel = arrays.get(path)
    if kernel is None:
      raise ConversionError(f"The head of task {task!r} has no conv weight")
    layout = HEAD_ACTIVATIONS[_head_layout(converted.sources.get(path, ""))]
    heads[task] = {"num_outputs": int(kernel.shape[-1]),
                   "activation": activations.get(task, layout.get(task, "identity"))}
    kernel_sizes.add(int(kernel.shape[0]))
    if ("decoders", task, "blocks", 0, "conv1", "conv", "kernel") in arrays:
      count = 1 + max(p[3] for p in arrays if p[:3] == ("decoders", task, "blocks"))
      decoders[task] = ("unet", tuple(
          int(arrays[("decoders", task, "blocks", i, "conv2", "conv", "kernel")].shape[-1])
          for i in range(count)))
    elif ("decoders", task, "conv", "kernel") in arrays:
      decoders[task] = ("deeplabv3",
                        int(arrays[("decoders", task, "conv", "kernel")].shape[-1]))
    else:
      raise ConversionError(f"No UNet or DeepLabV3 decoder for task {task!r} in the weights")
  if len(set(decoders.values())) != 1:
    raise ConversionError(f"The tasks have different decoders: {decoders}")
  if len(kernel_sizes) != 1:
    raise ConversionError(f"The heads have different kernel sizes: {sorted(kernel_sizes)}")
  decoder, decoder_channels = next(iter(decoders.values()))
  config = {"encoder": arch, "decoder": decoder, "decoder_channels": decoder_channels,
            "heads": heads, "dtype": "float32", "input_block": None,
            "head_kernel_size": kernel_sizes.pop()}
  if any(p[0] == "input_block" for p in arrays):
    config["input_block"] = "semantic_conv"
    config["in_channels"] = RGB_CHANNELS + int(
        arrays[("input_block", "conv_in", "kernel")].shape[2])
  else:
    stem = ("encoder", names.STEM[names.family(arch)], "kernel")
    config["in_channels"] = int(arrays[stem].shape[2]) if stem in arrays else RGB_CHANNELS
  return config


def build(model_config: Mapping[str, Any], seed: int = 0) -> nnx.Module:
  return registry.build_model(ml_collections.ConfigDict(dict(model_config)),
                              rngs=nnx.Rngs(seed))


def convert_model(state_dict: Mapping[str, np.ndarray], arch: str | None = None, *,
                  source: str = "semantic_md", tasks: Mapping[str, str] | None = None,
                  activations: Mapping[str, str] | None = None, seed: int = 0
                  ) -> tuple[nnx.Module, AssignReport, dict[str, Any]]:
  """A whole smp / semantic_md model -> (our model holding every weight, report,
  its model config); ``tasks`` renames tasks, ``activations`` as `infer_model_config`."""
  converted = convert_state_dict(state_dict, name_map(source, tasks=tasks))
  if arch is None:
    arch = infer_arch(converted.sub(("encoder",)).arrays)
  model_config = infer_model_config(converted, arch, activations)
  model = build(model_config, seed)
  report = assign(model, converted, what=f"{source} weights")
  return model, report, model_config


def arrays_of(module: nnx.Module, paths: Sequence[Path], prefix: Path = ()
              ) -> dict[Path, np.ndarray]:
  """Current values of ``paths`` of ``module`` as numpy, keyed ``prefix + path``."""
  variables = model_variables(module)
  return {tuple(prefix) + tuple(p): np.asarray(variables[p].get_value()) for p in paths}


def load_pretrained(model: nnx.Module, directory: str, *, encoder: str | None = None
                    ) -> AssignReport:
  """Loads a converted checkpoint (``python -m smd_jax.convert ... --out directory``)
  into ``model`` in place: what ``config.init_from`` does before training.

  Encoder-only weights fill the encoder (everything else keeps its initialisation);
  whole-model weights fill every Param and BatchNorm statistic. Shapes must match,
  except that the encoder's first conv may gain input channels (ImageNet RGB filters
  into a 3 + k channel model; the new channels keep the model's init). ``encoder``
  (the config's encoder name) gives a clearer error for weights of another encoder.
  """
  arrays, meta = io.load_converted(directory)
  what = f"init_from {directory}"
  if encoder is not None and meta.get("arch") not in (None, encoder):
    raise ConversionError(f'{what} holds {meta["arch"]} weights, but the model\'s encoder '
                          f"is {encoder}")
  converted = Converted(arrays, {p: dotted(p) for p in arrays})
  scope = ("encoder",) if meta.get("scope") == "encoder" else ()
  return assign(model, converted, scope=scope, widen=stem_path(model), what=what)


def _init_from_wanted(config, workdir: str) -> str | None:
  """``config.init_from`` when it is set and ``workdir`` holds no checkpoint yet, else None."""
  value = config.get("init_from")
  if not value:
    return None
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpoints = os.path.join(os.path.abspath(workdir), "checkpoints")  # checkpoints.Checkpointer
  if os.path.isdir(checkpoints) and ocp.utils.checkpoint_steps(checkpoints):
    logging.info("%s has checkpoints: resuming, not loading init_from %s", workdir, value)
    return None
  return value


def fetch_init_from(config, workdir: str) -> None:
  """Resolves ``config.init_from`` (Hub weights: downloaded and converted once, then
  cached) before the data set is built, so a wrong id or a missing offline cache stops
  the run in one line before any work; `maybe_init_from` then finds it cached."""
  value = _init_from_wanted(config, workdir)
  if value:
    from smd_jax.convert import hub  # pylint: disable=g-import-not-at-top
    hub.resolve(value, config.model.get("encoder"))


def maybe_init_from(model: nnx.Module, config, workdir: str) -> AssignReport | None:
  """`load_pretrained` of ``config.init_from`` into ``model``, when it is set and
  ``workdir`` holds no checkpoint yet (a run that has one resumes from it instead).

  ``init_from`` is a converted directory, a Hub model id ``org/name[@revision]``, or
  ``imagenet`` (the authors' weights for ``config.model.encoder``, `hub.DEFAULT_WEIGHTS`);
  Hub weights are downloaded, converted and cached on first use (`hub.fetch`). What was
  loaded (for Hub ids: repository, resolved commit, file sha256) goes to
  ``<workdir>/init_from.json``. Returns the report, or None when nothing was loaded."""
  value = _init_from_wanted(config, workdir)
  if not value:
    return None
  from smd_jax.convert import hub  # pylint: disable=g-import-not-at-top
  encoder = config.model.get("encoder")
  directory, fetched = hub.resolve(value, encoder)
  try:
    report = load_pretrained(model, directory, encoder=encoder)
  except (ConversionError, FileNotFoundError, ValueError) as e:
    raise UserError(f"init_from {value}: {e}") from e
  logging.info("Initialised from %s%s: %s.", value,
               f" ({fetched.repo_id}@{fetched.commit})" if fetched else "", report.summary())
  if jax.process_index() == 0:
    record = {"init_from": value, "directory": os.path.abspath(directory),
              "arch": io.read_metadata(directory).get("arch"),
              "widened": dotted(report.widened) if report.widened else None,
              "hub": fetched.provenance() if fetched else None}
    output_files.write_json(os.path.join(workdir, INIT_FROM_FILE), record)
  return report
