"""Where the depth error is: metrics per depth range and near vs. away from semantic contours.

Semantic-MD argues that semantic signals sharpen depth at object boundaries. The
pooled metrics cannot show that, so evaluation also pools the same depth metrics
(`metrics.depth_metric_sums`) over sub-masks of the valid pixels:

* depth bins by ground-truth depth (metres, after the task's clamp to
  `max_depth`): 0-2, 2-5, 5-10, 10-15 m by default. Bins are [lo, hi), except the
  last, which includes its upper edge, where everything clamped to 15 m lands;
* `near_contours`: pixels within `contour_radius` pixels (Chebyshev distance, a
  (2r+1)x(2r+1) dilation; r = 2 gives 5x5) of a semantic contour
  (`semantics.label_contours`, the paper's 3x3 dilation != erosion of the label
  map), and `off_contours`: every other valid pixel.

The sums are jittable and added up over batches, devices and hosts exactly like
the main metrics, so each region's numbers are pooled over all its pixels in the
split. Each region also reports `fraction`: its share of all valid pixels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smd_jax import metrics, semantics

DEPTH_BINS = ((0.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 15.0))
CONTOUR_RADIUS = 2
NEAR, OFF = "near_contours", "off_contours"
PREFIX = "breakdown"


def _edge(x: float) -> str:
  return f"{x:g}"


def bin_name(lo: float, hi: float) -> str:
  return f"depth_{_edge(lo)}-{_edge(hi)}m"


def near_contours(semantic: jax.Array, radius: int = CONTOUR_RADIUS) -> jax.Array:
  """[B,H,W] bool: within `radius` pixels of a semantic contour of the label map."""
  contours = semantics.label_contours(semantic)
  size = 2 * int(radius) + 1
  dilated = jax.lax.reduce_window(contours, 0, jax.lax.max, (1, size, size), (1, 1, 1), "SAME")
  return dilated > 0


def region_masks(target: jax.Array, valid: jax.Array, semantic: jax.Array, *,
                 bins: Sequence[tuple[float, float]] = DEPTH_BINS,
                 contour_radius: int = CONTOUR_RADIUS) -> dict[str, jax.Array]:
  """Sub-masks of `valid` [B,H,W]: one per depth bin of `target` (metres), near / off contours."""
  masks = {}
  for i, (lo, hi) in enumerate(bins):
    upper = target <= hi if i == len(bins) - 1 else target < hi
    masks[bin_name(lo, hi)] = valid & (target >= lo) & upper
  near = near_contours(semantic, contour_radius)
  masks[NEAR] = valid & near
  masks[OFF] = valid & ~near
  return masks


def breakdown_sums(pred: jax.Array, target: jax.Array, valid: jax.Array, semantic: jax.Array, *,
                   bins: Sequence[tuple[float, float]] = DEPTH_BINS,
                   contour_radius: int = CONTOUR_RADIUS) -> dict[str, dict[str, jax.Array]]:
  """Per-region `depth_metric_sums` of one batch (jittable); region name -> sums.

  Args:
    pred: [B,H,W] predicted depth, metres. target: [B,H,W] ground truth, metres
      (already clamped as the depth task clamps it), NaN allowed where invalid.
    valid: [B,H,W] bool. semantic: [B,H,W] int label map (-1 unlabelled).
  """
  valid = valid & jnp.isfinite(target) & (target > 0)
  masks = region_masks(target, valid, semantic, bins=bins, contour_radius=contour_radius)
  return {name: metrics.depth_metric_sums(pred, target, mask) for name, mask in masks.items()}


def region_order(name: str) -> tuple:
  """Depth bins by their lower edge, then near and off contours, then anything else."""
  if name.startswith("depth_") and name.endswith("m"):
    try:
      return (0, float(name[len("depth_"):-1].split("-")[0]), name)
    except ValueError:
      pass
  return (1, [NEAR, OFF].index(name) if name in (NEAR, OFF) else 2, name)


def finalize_breakdown(sums: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
  """Summed `breakdown_sums` -> flat {"breakdown/<region>/<metric>": value}.

  Besides the depth metrics, `fraction` is the region's share of the valid
  pixels (the depth bins' fractions add up to 1 when the bins cover every depth,
  and so do near + off contours).
  """
  total = float(sums[NEAR]["count"]) + float(sums[OFF]["count"])
  out = {}
  for region in sorted(sums, key=region_order):  # (jitted outputs come back sorted by name)
    region_sums = sums[region]
    for k, v in metrics.finalize_depth_metrics(region_sums).items():
      out[f"{PREFIX}/{region}/{k}"] = v
    out[f"{PREFIX}/{region}/fraction"] = (float(region_sums["count"]) / total if total
                                          else float("nan"))
  return out
