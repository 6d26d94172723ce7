"""Name -> constructor registries and ``build_model`` from an ml_collections config.

Encoders (``ENCODERS``): a constructor taking keyword args ``in_channels``,
``drop_path_rate``, ``output_stride`` (32, 16 or 8; smaller strides dilate the deep
stages), ``dtype`` and ``rngs``, returning a module with ``out_channels`` and
``reductions`` (one entry per feature) whose ``__call__`` returns the features shallow
-> deep, the first at stride 2 (smp's stride-1 identity entry is left out, as smp's
decoders drop it). Adding one is a function plus one line here.

Decoders (``DECODERS``): ``(encoder_channels, *, dtype, rngs, [decoder_channels])`` ->
module with ``out_channels``, mapping the feature list to one map. Class attributes
tell ``build_model`` how to build around it: ``output_stride`` (the encoder's stride:
UNet 32, DeepLabV3 8), ``head_kernel_size`` (UNet 3, DeepLabV3 1) and
``head_upsampling`` (bilinear factor from the decoder output to the input resolution:
UNet 1, DeepLabV3 8).

Input blocks (``INPUT_BLOCKS``): ``(in_channels, *, dtype, rngs)`` -> module with
``out_channels``, applied to the k non-RGB input channels before the encoder (the
paper's 'semantic convolution': k -> 3).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import nnx

from smd_jax.models import deeplab, efficientnet, resnet, semantic_conv, unet
from smd_jax.models.heads import ACTIVATIONS, SegmentationHead
from smd_jax.models.layers import canonical_dtype
from smd_jax.models.model import (BRANCH_INITS, RGB_CHANNELS, STEM_INITS, DenseModel,
                                  init_branches, init_stem)

ENCODERS: dict[str, Callable[..., nnx.Module]] = {
    "efficientnet_b2": efficientnet.efficientnet_b2,
    "efficientnet_b3": efficientnet.efficientnet_b3,
    "efficientnet_b4": efficientnet.efficientnet_b4,
    "resnet50": resnet.resnet50,
}

DECODERS: dict[str, Callable[..., nnx.Module]] = {
    "unet": unet.UnetDecoder,
    "deeplabv3": deeplab.DeepLabV3Decoder,
}

INPUT_BLOCKS: dict[str, Callable[..., nnx.Module]] = {
    "semantic_conv": semantic_conv.semantic_conv,
}

__all__ = ["ACTIVATIONS", "DECODERS", "ENCODERS", "INPUT_BLOCKS", "build_model", "lookup"]


def lookup(registry: Mapping[str, Callable[..., Any]], name: str, kind: str):
  """registry[name], or ValueError naming the known entries."""
  if name not in registry:
    raise ValueError(f"Unknown {kind} {name!r}; known {kind}s: {sorted(registry)}")
  return registry[name]


def _field(obj: Any, name: str, default: Any = None) -> Any:
  # Accept ConfigDicts, plain dicts and attribute objects alike.
  if isinstance(obj, Mapping):
    return obj.get(name, default)
  return getattr(obj, name, default)


def _check_heads(heads_config: Any) -> None:
  """ValueError unless ``heads_config`` names at least one task, each with a known activation."""
  if not heads_config:
    raise ValueError("model_config.heads must name at least one task")
  for task in heads_config:
    lookup(ACTIVATIONS, _field(heads_config[task], "activation", "identity"), "activation")


def _build_input_block(block_fn: Callable[..., nnx.Module], block_name: str, in_channels: int,
                       dtype, rngs: nnx.Rngs) -> nnx.Module:
  """The input block over the k = in_channels - 3 semantic channels that follow RGB."""
  extra = in_channels - RGB_CHANNELS
  if extra < 1:
    raise ValueError(f"input_block {block_name!r} needs semantic channels after RGB: "
                     f"in_channels must be > {RGB_CHANNELS}, got {in_channels}")
  return block_fn(extra, dtype=dtype, rngs=rngs)


def _build_encoder(model_config: Any, encoder_fn: Callable[..., nnx.Module],
                   decoder_fn: Callable[..., nnx.Module], in_channels: int, dtype,
                   rngs: nnx.Rngs) -> nnx.Module:
  """The encoder at the output stride the decoder needs (its deepest reduction checked)."""
  output_stride = getattr(decoder_fn, "output_stride", 32)
  encoder = encoder_fn(in_channels=in_channels,
                       drop_path_rate=float(_field(model_config, "drop_path_rate", 0.0)),
                       output_stride=output_stride, dtype=dtype, rngs=rngs)
  if max(encoder.reductions) != output_stride:
    raise ValueError(f"{_field(model_config, 'decoder')} needs encoder output stride "
                     f"{output_stride}, got reductions {encoder.reductions}")
  return encoder


def _decoder_kwargs(model_config: Any) -> dict[str, Any]:
  """Optional decoder keyword arguments: ``decoder_channels`` as an int or a tuple."""
  decoder_channels = _field(model_config, "decoder_channels")
  if decoder_channels is None:
    return {}
  return {"decoder_channels": (decoder_channels if isinstance(decoder_channels, int)
                               else tuple(decoder_channels))}


def _build_task_branches(heads_config: Any, decoder_fn: Callable[..., nnx.Module],
                         encoder_channels, decoder_kwargs: dict[str, Any],
                         head_kernel_size: int | None, dtype, rngs: nnx.Rngs
                         ) -> tuple[dict[str, nnx.Module], dict[str, nnx.Module]]:
  """({task: decoder}, {task: head}): one decoder and one head per task, built in task
  name order (so parameters do not depend on the config's key order); heads use
  ``head_kernel_size`` where given, else the decoder's."""
  if head_kernel_size is None:
    head_kernel_size = getattr(decoder_fn, "head_kernel_size", 3)
  decoders, heads = {}, {}
  for task in sorted(heads_config):
    head_config = heads_config[task]
    decoders[task] = decoder_fn(encoder_channels, dtype=dtype, rngs=rngs, **decoder_kwargs)
    heads[task] = SegmentationHead(
        decoders[task].out_channels, int(_field(head_config, "num_outputs")),
        _field(head_config, "activation", "identity"),
        kernel_size=int(head_kernel_size),
        upsampling=getattr(decoder_fn, "head_upsampling", 1), dtype=dtype, rngs=rngs)
  return decoders, heads


def build_model(model_config: Any, *, rngs: nnx.Rngs) -> DenseModel:
  """Build the [input block]/encoder/decoder/head model described by ``model_config``.

  Fields:
    encoder: name in ENCODERS; decoder: name in DECODERS (its ``output_stride`` sets
      the encoder's, its ``head_kernel_size`` / ``head_upsampling`` the heads').
    in_channels: raw input channels (default 3): 3 RGB + k semantic channels.
    input_block: optional name in INPUT_BLOCKS (None / missing: none). With one, the
      block maps the k = in_channels - 3 semantic channels to ``out_channels`` and the
      encoder gets 3 + that many input channels.
    dtype: 'float32' (default) | 'bfloat16' compute dtype; parameters are always f32.
    heads: mapping task -> {'num_outputs': int, 'activation': str (default
      'identity')}; one decoder and one head per task, for any decoder.
    head_kernel_size: optional head conv size overriding the decoder's (the authors'
      multi-task DeepLabV3 heads are 3x3 where smp's single-task one is 1x1).
    stem_init: name in `model.STEM_INITS` for the encoder stem's input channels beyond
      RGB (default 'encoder': the encoder's own init).
    branch_init: name in `model.BRANCH_INITS` for the decoders and heads (default
      'smp'; 'torch': PyTorch's default conv init, as the authors' multi-task models).
    drop_path_rate: encoder stochastic depth (default 0).
    decoder_channels: optional decoder widths (UNet: a sequence; DeepLabV3: an int
      or a 1-sequence).
  """
  encoder_fn = lookup(ENCODERS, _field(model_config, "encoder"), "encoder")
  decoder_fn = lookup(DECODERS, _field(model_config, "decoder"), "decoder")
  block_name = _field(model_config, "input_block")
  block_fn = lookup(INPUT_BLOCKS, block_name, "input block") if block_name else None
  dtype = canonical_dtype(_field(model_config, "dtype", "float32"))
  heads_config = _field(model_config, "heads")
  _check_heads(heads_config)  # fail before the (slow) construction
  stem_init = _field(model_config, "stem_init") or "encoder"
  lookup(STEM_INITS, stem_init, "stem_init")
  branch_init = _field(model_config, "branch_init") or "smp"
  lookup(BRANCH_INITS, branch_init, "branch_init")
  in_channels = int(_field(model_config, "in_channels", RGB_CHANNELS))

  input_block, encoder_in_channels = None, in_channels
  if block_fn is not None:
    input_block = _build_input_block(block_fn, block_name, in_channels, dtype, rngs)
    encoder_in_channels = RGB_CHANNELS + input_block.out_channels
  encoder = _build_encoder(model_config, encoder_fn, decoder_fn, encoder_in_channels, dtype, rngs)
  init_stem(encoder, stem_init, rngs)
  decoders, heads = _build_task_branches(heads_config, decoder_fn, encoder.out_channels,
                                         _decoder_kwargs(model_config),
                                         _field(model_config, "head_kernel_size"), dtype, rngs)
  init_branches({**{f"decoder/{t}": m for t, m in decoders.items()},
                 **{f"head/{t}": m for t, m in heads.items()}}, branch_init, rngs)
  return DenseModel(encoder, decoders, heads, input_block=input_block)
