"""Depth and segmentation metrics as exact, mask-aware sums.

Every metric is pooled over all valid pixels of everything seen (not a mean of
per-image or per-batch means), which is what the paper's formulas define. To make
that exact across batches, devices and hosts, metrics are computed in two steps:

1. `depth_metric_sums` (jittable) turns one batch into a dict of sums;
2. `finalize_depth_metrics` turns summed sums into the reported numbers.

Segmentation tasks do the same with a confusion matrix
(`segmentation_metric_sums` -> {"confusion": [C, C]}, then
`finalize_segmentation_metrics` or, for two-class contour maps,
`finalize_contour_metrics`).

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

DEPTH_SUM_KEYS = ("count", "sq_err", "abs_rel", "rme", "log10", "delta1", "delta2", "delta3")
DEPTH_METRIC_NAMES = ("rmse", "abs_rel", "rme", "log10", "delta1", "delta2", "delta3")
SEGMENTATION_METRIC_NAMES = ("miou", "pixel_accuracy")
CONTOUR_METRIC_NAMES = ("f1", "precision", "recall", "pixel_accuracy")

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
    error), `abs_rel` (sum of |pred - gt| / gt), `rme` (sum of |pred - gt| / pred,
    the paper's "relative mean error", Sec. 4.1), `log10` (sum of
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
      # Semantic-MD Sec. 4.1 defines RME = (1/N) sum |d_hat - d| / d_hat, divided by
      # the *prediction* (clamped to MIN_PREDICTED_DEPTH), unlike the usual AbsRel
      # (divided by ground truth). Both are reported; tables of the paper are RME.
      "rme": jnp.sum(w * jnp.abs(err) / pr),
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
      "rme": float(sums["rme"]) / count,
      "log10": float(sums["log10"]) / count,
      **{f"delta{i}": float(sums[f"delta{i}"]) / count for i in (1, 2, 3)},
  }


def depth_metrics(pred: jax.Array, target: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
  """Depth metrics of one batch, pooled over its valid pixels (jittable).

  Args:
    pred: [...] predicted depth, metres. target: [...] metres, NaN allowed where
      invalid. valid: [...] bool.

  Returns:
    dict with `rmse`, `abs_rel`, `rme`, `log10`, `delta1`, `delta2`, `delta3` as float32
    scalars; all NaN when the batch has no valid pixel.
  """
  sums = depth_metric_sums(pred, target, valid)
  count = sums["count"]
  # Divide by count; 0/0 gives NaN on purpose (no valid pixel: metric undefined).
  safe = lambda x: jnp.where(count > 0, x / jnp.maximum(count, 1.0), jnp.nan)
  return {
      "rmse": jnp.sqrt(safe(sums["sq_err"])),
      "abs_rel": safe(sums["abs_rel"]),
      "rme": safe(sums["rme"]),
      "log10": safe(sums["log10"]),
      **{f"delta{i}": safe(sums[f"delta{i}"]) for i in (1, 2, 3)},
  }


def confusion_matrix(pred_labels: jax.Array, target: jax.Array, valid: jax.Array,
                     num_classes: int) -> jax.Array:
  """[C, C] float32 pixel counts; rows = ground truth class, columns = prediction.

  Jittable. Each valid pixel is mapped to the flat index target * C + pred and
  counted with one `bincount` (a scatter-add; no [N, C] one-hot is materialised).
  Pixels whose target or prediction lies outside [0, C) are dropped along with the
  invalid ones, so garbage labels (-1, 255) cannot land in a wrong cell. Counts are
  taken in int32 and converted to float32: exact per batch up to 2**24 pixels per
  cell; `accumulate` adds batches in float64 on the host.

  Args:
    pred_labels: [...] int predicted class. target: [...] int ground-truth class,
      anything where not `valid`. valid: [...] bool. num_classes: C (static).
  """
  c = int(num_classes)
  pred_labels = pred_labels.astype(jnp.int32)
  target = target.astype(jnp.int32)
  valid = (valid & (target >= 0) & (target < c) & (pred_labels >= 0) & (pred_labels < c))
  # Invalid pixels go to an overflow bin c*c, which is cut off below.
  flat = jnp.where(valid, target * c + pred_labels, c * c).reshape(-1)
  counts = jnp.bincount(flat, length=c * c + 1)[: c * c]
  return counts.reshape(c, c).astype(jnp.float32)


def segmentation_metric_sums(logits: jax.Array, target: jax.Array,
                             valid: jax.Array) -> dict[str, jax.Array]:
  """Per-batch sums for segmentation metrics (jittable).

  Args:
    logits: [..., C] class scores; the prediction is their arg-max.
    target: [...] int class index, anything where not `valid`. valid: [...] bool.

  Returns:
    {"confusion": [C, C] float32}, rows = ground truth, columns = prediction.
  """
  pred = jnp.argmax(logits, axis=-1)
  return {"confusion": confusion_matrix(pred, target, valid, logits.shape[-1])}


def finalize_segmentation_metrics(sums: Mapping[str, np.ndarray | jax.Array]) -> dict[str, float]:
  """mIoU and pixel accuracy from a summed confusion matrix; NaN when nothing valid.

  IoU_c = TP_c / (TP_c + FP_c + FN_c) = cm[c,c] / (row_c + col_c - cm[c,c]). mIoU
  averages IoU_c over the classes whose union is non-zero, i.e. that occur in the
  ground truth or in the prediction of the valid pixels seen; classes absent from
  both would be 0/0 and are left out (a class that is only predicted, never true,
  counts with IoU 0). Pixel accuracy = trace / total.
  """
  cm = np.asarray(sums["confusion"], np.float64)
  total = cm.sum()
  if total == 0:
    return {name: float("nan") for name in SEGMENTATION_METRIC_NAMES}
  tp = np.diag(cm)
  union = cm.sum(axis=0) + cm.sum(axis=1) - tp
  present = union > 0
  return {
      "miou": float(np.mean(tp[present] / union[present])),
      "pixel_accuracy": float(tp.sum() / total),
  }


def finalize_contour_metrics(sums: Mapping[str, np.ndarray | jax.Array]) -> dict[str, float]:
  """Binary metrics from a summed 2x2 confusion matrix, class 1 = contour (positive).

  precision = TP / (TP + FP), recall = TP / (TP + FN),
  f1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of the two where both exist),
  pixel_accuracy = (TP + TN) / total. Each is NaN where its denominator is 0
  (e.g. precision when nothing is predicted as contour); all NaN when nothing valid.
  """
  cm = np.asarray(sums["confusion"], np.float64)
  if cm.shape != (2, 2):
    raise ValueError(f"Contour metrics need a 2x2 confusion matrix, got {cm.shape}.")
  tn, fp, fn, tp = cm[0, 0], cm[0, 1], cm[1, 0], cm[1, 1]
  ratio = lambda a, b: float(a / b) if b > 0 else float("nan")
  return {
      "f1": ratio(2 * tp, 2 * tp + fp + fn),
      "precision": ratio(tp, tp + fp),
      "recall": ratio(tp, tp + fn),
      "pixel_accuracy": ratio(tp + tn, cm.sum()),
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
