"""Name -> constructor registries and ``build_model`` from an ml_collections config.

Adding an encoder is one constructor function (keyword args ``in_channels``,
``drop_path_rate``, ``dtype``, ``rngs``; returns a module with ``out_channels`` and
``reductions`` whose ``__call__`` returns features shallow -> deep) plus one line in
``ENCODERS``. A decoder constructor takes ``(encoder_channels, *, dtype, rngs)`` and
returns a module with ``out_channels`` mapping the feature list to one map at input
resolution.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import nnx

from smd_jax.models import efficientnet, unet
from smd_jax.models.heads import ACTIVATIONS, SegmentationHead
from smd_jax.models.layers import canonical_dtype
from smd_jax.models.model import DenseModel

ENCODERS: dict[str, Callable[..., nnx.Module]] = {
    'efficientnet_b2': efficientnet.efficientnet_b2,
    'efficientnet_b3': efficientnet.efficientnet_b3,
    'efficientnet_b4': efficientnet.efficientnet_b4,
}

DECODERS: dict[str, Callable[..., nnx.Module]] = {
    'unet': unet.UnetDecoder,
}

__all__ = ['ACTIVATIONS', 'DECODERS', 'ENCODERS', 'build_model', 'lookup']


def lookup(registry: Mapping[str, Callable[..., Any]], name: str, kind: str):
  """registry[name], or ValueError naming the known entries."""
  if name not in registry:
    raise ValueError(f'Unknown {kind} {name!r}; known {kind}s: {sorted(registry)}')
  return registry[name]


def _field(obj: Any, name: str, default: Any = None) -> Any:
  # Accept ConfigDicts, plain dicts and attribute objects alike.
  if isinstance(obj, Mapping):
    return obj.get(name, default)
  return getattr(obj, name, default)


def build_model(model_config: Any, *, rngs: nnx.Rngs) -> DenseModel:
  """Build the encoder/decoder/head model described by ``model_config``.

  Fields: ``encoder`` (name in ENCODERS), ``decoder`` (name in DECODERS),
  ``in_channels`` (default 3), ``dtype`` ('float32' default | 'bfloat16'; parameters are
  always float32), ``heads``: mapping task -> {'num_outputs': int, 'activation': str
  (default 'identity')}; optional ``drop_path_rate`` (default 0) and
  ``decoder_channels`` (decoder default). One decoder and head is built per task.
  """
  encoder_fn = lookup(ENCODERS, _field(model_config, 'encoder'), 'encoder')
  decoder_fn = lookup(DECODERS, _field(model_config, 'decoder'), 'decoder')
  dtype = canonical_dtype(_field(model_config, 'dtype', 'float32'))
  heads_config = _field(model_config, 'heads')
  if not heads_config:
    raise ValueError('model_config.heads must name at least one task')
  for task in heads_config:  # fail before the (slow) construction
    lookup(ACTIVATIONS, _field(heads_config[task], 'activation', 'identity'), 'activation')

  encoder = encoder_fn(in_channels=int(_field(model_config, 'in_channels', 3)),
                       drop_path_rate=float(_field(model_config, 'drop_path_rate', 0.0)),
                       dtype=dtype, rngs=rngs)
  decoder_kwargs = {}
  if _field(model_config, 'decoder_channels') is not None:
    decoder_kwargs['decoder_channels'] = tuple(_field(model_config, 'decoder_channels'))
  decoders, heads = {}, {}
  for task in sorted(heads_config):
    head_config = heads_config[task]
    decoders[task] = decoder_fn(encoder.out_channels, dtype=dtype, rngs=rngs,
                                **decoder_kwargs)
    heads[task] = SegmentationHead(
        decoders[task].out_channels, int(_field(head_config, 'num_outputs')),
        _field(head_config, 'activation', 'identity'), dtype=dtype, rngs=rngs)
  return DenseModel(encoder, decoders, heads)
