"""HyperSim for Semantic-MD as a TFDS data set (no TensorFlow needed).

Importing this package registers the TFDS builder named `hypersim`.

  Builder          the builder (configs res256 (default), res128, res64)
  HypersimConfig   its config class (`resolution` = stored square side)
  hypersim_config  hypersim_config(resolution) -> config named f"res{resolution}"

Submodules: `processing` (pure numpy frame processing), `metadata` (split lists,
NYU40 table, camera matrices), `synthetic` (procedural HyperSim-format scenes).
"""

from tfds_hypersim import hypersim_dataset_builder
from tfds_hypersim.hypersim_dataset_builder import Builder
from tfds_hypersim.hypersim_dataset_builder import HypersimConfig
from tfds_hypersim.hypersim_dataset_builder import hypersim_config

__all__ = ["Builder", "HypersimConfig", "hypersim_config"]
