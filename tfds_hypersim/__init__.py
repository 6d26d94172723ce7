"""HyperSim for Semantic-MD as a TFDS data set (no TensorFlow needed).

Importing this package registers the TFDS builder named `hypersim`.

  Builder          the builder (configs res256 (default), res128, res64,
                   res256_planar, res256_official, res256_official_planar)
  HypersimConfig   its config class (`resolution` = stored square side,
                   `split_scheme` "semantic_md"|"official", `depth_type`
                   "distance"|"planar")
  hypersim_config  hypersim_config(resolution, split_scheme="semantic_md",
                   depth_type="distance") -> config named "res{resolution}" for
                   the paper's defaults, else e.g. "res256_official_planar"

Submodules: `processing` (pure numpy frame processing), `metadata` (split lists,
known-broken trajectories, NYU40 table, camera matrices), `synthetic`
(procedural HyperSim-format scenes), `download` (`python -m
tfds_hypersim.download`: the builder's files out of HyperSim's remote zips).
"""

from tfds_hypersim import hypersim_dataset_builder
from tfds_hypersim.hypersim_dataset_builder import Builder, hypersim_config, HypersimConfig

__all__ = ["Builder", "HypersimConfig", "hypersim_config"]
