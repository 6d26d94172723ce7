"""Networks: encoders (EfficientNet), decoders (UNet), heads, and their registries."""

from smd_jax.models.efficientnet import EfficientNet
from smd_jax.models.heads import SegmentationHead
from smd_jax.models.model import DenseModel
from smd_jax.models.registry import ACTIVATIONS, DECODERS, ENCODERS, build_model
from smd_jax.models.unet import UnetDecoder

__all__ = [
    'ACTIVATIONS', 'DECODERS', 'DenseModel', 'EfficientNet', 'ENCODERS', 'SegmentationHead',
    'UnetDecoder', 'build_model',
]
