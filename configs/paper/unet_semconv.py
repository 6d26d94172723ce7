"""Table 1, Multi-Input, sem. conv.: the raw label map -> learned block -> 3 channels.

As the authors' SemanticConvolutionModel: the label map as one float channel (-1,
1..40) -> conv3x3 (1 -> 8) + BN -> MBConv -> conv1x1 (8 -> 3) + BN + sigmoid, next to
RGB into a 6-channel stem (new channels: PyTorch's default init). Our one-hot-40 input
to the same block: variants/unet_semconv_onehot40.py.

Paper setup from configs/base.py; published numbers in smd_jax/paper.py.
"""

from configs import base


def get_config():
  config = base.get_config()
  base.authors_semantic_input(config, "labels_raw")
  config.model.input_block = "semantic_conv"
  config.paper_row = "unet_semconv"
  return config
