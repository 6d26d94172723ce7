"""Depth metrics as exact, mask-aware sums.

Every metric is pooled over all valid pixels of everything seen (not a mean of
per-image or per-batch means), which is what the paper's formulas define. To make
that exact across batches, devices and hosts, metrics are computed in two steps:

1. `depth_metric_sums` (jittable) turns one batch into a dict of sums;
2. `finalize_depth_metrics` turns summed sums into the reported numbers.

Sums from several batches add with `accumulate`. On the host they are kept in
float64 so that a whole split (billions of pixels) adds up without round-off.

The reference implementation counted invalid pixels as delta failures and
averaged per-batch means; neither is repeated here.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

DEPTH_SUM_KEYS = ("count", "sq_err", "abs_rel", "log10", "delta1", "delta2", "delta3")
DEPTH_METRIC_NAMES = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")

# Predictions are clamped to this many metres before ratios and logs, so a
# prediction of exactly zero cannot produce inf.
MIN_PREDICTED_DEPTH = 1e-3


def depth_metric_sums(pred: jax.Array, target: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
  """Per-batch sums for the depth metrics.

  Args:
    pred: [...] predicted depth in metres.
    target: [...] ground-truth depth in metres; may hold NaN where `valid` is False.
    valid: [...] bool, pixels that count. Pixels with a non-positive or non-finite
      target are dropped as well, since ratios and logs are undefined there.

  Returns:
    dict of float32 scalars: `count` (valid pixels), `sq_err` (sum of squared
    error), `abs_rel` (sum of |pred - gt| / gt), `log10` (sum of
    |log10 pred - log10 gt|), `delta{1,2,3}` (number of pixels with
    max(pred/gt, gt/pred) < 1.25**i).
  """
  valid = valid & jnp.isfinite(target) & (target > 0)
  # Replace masked-out values before any arithmetic so NaN never reaches a sum.
  gt = jnp.where(valid, target, 1.0).astype(jnp.float32)
  pr = jnp.where(valid, jnp.maximum(pred.astype(jnp.float32), MIN_PREDICTED_DEPTH), 1.0)
  w = valid.astype(jnp.float32)
  err = pr - gt
  ratio = jnp.maximum(pr / gt, gt / pr)
  sums = {
      "count": jnp.sum(w),
      "sq_err": jnp.sum(w * err**2),
      "abs_rel": jnp.sum(w * jnp.abs(err) / gt),
      "log10": jnp.sum(w * jnp.abs(jnp.log10(pr) - jnp.log10(gt))),
  }
  for i in (1, 2, 3):
    sums[f"delta{i}"] = jnp.sum(w * (ratio < 1.25**i))
  return sums


def accumulate(total: Mapping[str, np.ndarray] | None, sums: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """Adds one batch of sums to a running float64 host total (None starts one)."""
  sums = {k: np.asarray(jax.device_get(v), dtype=np.float64) for k, v in sums.items()}
  if total is None:
    return sums
  return {k: total[k] + sums[k] for k in total}


def finalize_depth_metrics(sums: Mapping[str, float | np.ndarray | jax.Array]) -> dict[str, float]:
  """Turns summed `depth_metric_sums` into metrics; NaN when no pixel was valid."""
  count = float(sums["count"])
  if count == 0:
    return {name: float("nan") for name in DEPTH_METRIC_NAMES}
  return {
      "rmse": float(np.sqrt(float(sums["sq_err"]) / count)),
      "abs_rel": float(sums["abs_rel"]) / count,
      "log10": float(sums["log10"]) / count,
      **{f"delta{i}": float(sums[f"delta{i}"]) / count for i in (1, 2, 3)},
  }


def depth_metrics(pred: jax.Array, target: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
  """Depth metrics of one batch, pooled over its valid pixels (jittable).

  Args:
    pred: [...] predicted depth, metres. target: [...] metres, NaN allowed where
      invalid. valid: [...] bool.

  Returns:
    dict with `rmse`, `abs_rel`, `log10`, `delta1`, `delta2`, `delta3` as float32
    scalars; all NaN when the batch has no valid pixel.
  """
  sums = depth_metric_sums(pred, target, valid)
  count = sums["count"]
  # Divide by count; 0/0 gives NaN on purpose (no valid pixel: metric undefined).
  safe = lambda x: jnp.where(count > 0, x / jnp.maximum(count, 1.0), jnp.nan)
  return {
      "rmse": jnp.sqrt(safe(sums["sq_err"])),
      "abs_rel": safe(sums["abs_rel"]),
      "log10": safe(sums["log10"]),
      **{f"delta{i}": safe(sums[f"delta{i}"]) for i in (1, 2, 3)},
  }


def constant_baseline_sums(target: np.ndarray, valid: np.ndarray) -> dict[str, float]:
  """Host sums needed for the best constant predictor's RMSE (count, sum, sum of squares)."""
  valid = valid & np.isfinite(target) & (target > 0)
  t = np.asarray(target, np.float64)[valid]
  return {"count": float(t.size), "sum": float(t.sum()), "sum_sq": float(np.square(t).sum())}


def constant_baseline_rmse(sums: Mapping[str, float]) -> tuple[float, float]:
  """RMSE of the best constant predictor (the mean) and that constant, in metres.

  The constant minimising RMSE over a fixed set of pixels is their mean, and its
  RMSE is their standard deviation.
  """
  n = sums["count"]
  if n == 0:
    return float("nan"), float("nan")
  mean = sums["sum"] / n
  var = max(sums["sum_sq"] / n - mean**2, 0.0)
  return float(np.sqrt(var)), float(mean)
