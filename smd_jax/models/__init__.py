"""Networks: encoders (EfficientNet, ResNet), decoders (UNet, DeepLabV3), heads, input
blocks (semantic convolution), and their registries."""

from smd_jax.models.deeplab import DeepLabV3Decoder
from smd_jax.models.efficientnet import EfficientNet
from smd_jax.models.heads import SegmentationHead
from smd_jax.models.model import DenseModel
from smd_jax.models.registry import (ACTIVATIONS, DECODERS, ENCODERS, INPUT_BLOCKS,
                                     build_model)
from smd_jax.models.resnet import ResNet
from smd_jax.models.semantic_conv import SemanticConv
from smd_jax.models.unet import UnetDecoder

__all__ = [
    "ACTIVATIONS", "DECODERS", "DeepLabV3Decoder", "DenseModel", "EfficientNet", "ENCODERS",
    "INPUT_BLOCKS", "ResNet", "SegmentationHead", "SemanticConv", "UnetDecoder",
    "build_model",
]
