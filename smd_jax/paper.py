"""The paper's published numbers (Semantic-MD, Tables 1 and 2), keyed by config name.

Each row: (table, category, name as printed, RMSE, RME, log10, delta1, delta2, delta3),
HyperSim validation split (1,203 frames), depth in metres. The column the paper prints
as "RME" is stored as `abs_rel`: the paper's formula divides by the prediction, but the
authors' evaluation code (charyyev/semantic_md `source/utils/eval_metrics.py`) computes
only |pred - gt| / gt, so the published numbers are that and compare with our
`abs_rel`, not our `rme`. Config files under
configs/paper/ set `config.paper_row` to their key here.
"""

from __future__ import annotations

from typing import NamedTuple


class PaperRow(NamedTuple):
  table: str
  category: str
  name: str
  rmse: float
  abs_rel: float  # printed as "RME" in the paper; see the module docstring
  log10: float
  delta1: float
  delta2: float
  delta3: float


# Column order of the paper's tables: metric key in our results -> header.
COLUMNS = (("rmse", "RMSE ↓"), ("abs_rel", "RME (÷ gt) ↓"), ("log10", "log10 ↓"),
           ("delta1", "δ1 ↑"), ("delta2", "δ2 ↑"), ("delta3", "δ3 ↑"))

_ROWS = [
    ("unet_l1", "1", "Baseline", "ℓ1", 1.246, 0.311, 0.109, 0.596, 0.838, 0.919),
    ("unet_berhu", "1", "Baseline", "BerHu", 1.330, 0.350, 0.116, 0.576, 0.821, 0.909),
    ("unet_concat", "1", "Multi-Input", "concat", 1.283, 0.315, 0.111, 0.592, 0.834, 0.918),
    ("unet_1hot40", "1", "Multi-Input", "1hot-40", 1.189, 0.285, 0.101, 0.623, 0.863, 0.939),
    ("unet_1hot20", "1", "Multi-Input", "1hot-20", 1.213, 0.271, 0.099, 0.628, 0.864, 0.935),
    ("unet_1hot3", "1", "Multi-Input", "1hot-3", 1.209, 0.284, 0.106, 0.602, 0.850, 0.931),
    ("unet_semconv", "1", "Multi-Input", "sem. conv.", 1.228, 0.297, 0.106, 0.614, 0.842, 0.923),
    ("unet_contour", "1", "Multi-Input", "contour", 1.233, 0.311, 0.109, 0.598, 0.838, 0.920),
    ("unet_2head", "1", "Multi-Task", "2-head", 1.243, 0.304, 0.108, 0.607, 0.840, 0.920),
    ("unet_3head", "1", "Multi-Task", "3-head", 1.289, 0.301, 0.110, 0.601, 0.839, 0.918),
    ("unet_resnet50", "2", "Encoders", "Resnet50", 1.865, 0.517, 0.156, 0.467, 0.728, 0.850),
    ("unet_effnet_b2", "2", "Encoders", "EfficientNet-b2", 1.741, 0.459, 0.143, 0.508, 0.752,
     0.862),
    ("unet_effnet_b3", "2", "Encoders", "EfficientNet-b3", 1.657, 0.436, 0.136, 0.535, 0.772,
     0.875),
    ("unet_effnet_b4", "2", "Encoders", "EfficientNet-b4", 1.462, 0.391, 0.121, 0.581, 0.817,
     0.9037),
    ("unet_2head_dice", "2", "Losses", "2-head with Dice", 1.283, 0.323, 0.113, 0.589, 0.829,
     0.914),
    ("unet_2head_dice_ce", "2", "Losses", "2-head with Dice+CE", 1.269, 0.310, 0.108, 0.603,
     0.843, 0.921),
    ("unet_2head_ftl_ce", "2", "Losses", "2-head with FTL+CE", 1.296, 0.314, 0.112, 0.599,
     0.832, 0.914),
    ("unet_2head_sobel", "2", "Losses", "2-head with Sobel", 1.262, 0.318, 0.110, 0.597, 0.840,
     0.918),
    ("deeplab_l1", "2", "DeepLab", "ℓ1-baseline", 1.208, 0.292, 0.107, 0.604, 0.840, 0.923),
    ("deeplab_1hot40", "2", "DeepLab", "1hot-40", 1.091, 0.257, 0.094, 0.643, 0.879, 0.946),
    ("deeplab_2head_ce", "2", "DeepLab", "2-head with CE", 1.277, 0.314, 0.111, 0.593, 0.832,
     0.916),
    ("deeplab_2head_dice_ce", "2", "DeepLab", "2-head with Dice+CE", 1.154, 0.296, 0.105,
     0.619, 0.848, 0.925),
]

PUBLISHED: dict[str, PaperRow] = {key: PaperRow(*values) for key, *values in _ROWS}
