"""Depth and segmentation metrics against independent NumPy implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smd_jax import metrics

# Jitted once (per shape) and shared: eager op-by-op dispatch is the slow part.
DEPTH_METRICS = jax.jit(metrics.depth_metrics)
DEPTH_SUMS = jax.jit(metrics.depth_metric_sums)
SEG_SUMS = jax.jit(metrics.segmentation_metric_sums)
CONFUSION = jax.jit(metrics.confusion_matrix, static_argnums=3)


def numpy_depth_metrics(pred, gt, valid):
  """Textbook definitions, float64, pooled over valid pixels."""
  m = valid & np.isfinite(gt) & (gt > 0)
  p = np.maximum(pred[m].astype(np.float64), metrics.MIN_PREDICTED_DEPTH)
  g = gt[m].astype(np.float64)
  if g.size == 0:
    return {k: np.nan for k in metrics.DEPTH_METRIC_NAMES}
  ratio = np.maximum(p / g, g / p)
  return {
      "rmse": np.sqrt(np.mean((p - g) ** 2)),
      "abs_rel": np.mean(np.abs(p - g) / g),
      "rme": np.mean(np.abs(p - g) / p),  # Semantic-MD Sec. 4.1: divided by the prediction
      "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
      "delta1": np.mean(ratio < 1.25),
      "delta2": np.mean(ratio < 1.25**2),
      "delta3": np.mean(ratio < 1.25**3),
  }


def _random_case(seed, shape=(2, 5, 7), nan_frac=0.2):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0.5, 12.0, shape).astype(np.float32)
  pred = (gt * rng.uniform(0.6, 1.6, shape)).astype(np.float32)
  gt[rng.random(shape) < nan_frac] = np.nan
  valid = np.isfinite(gt)
  return pred, gt, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_metrics_match_numpy(seed):
  pred, gt, valid = _random_case(seed)
  got = DEPTH_METRICS(pred, gt, valid)
  want = numpy_depth_metrics(pred, gt, valid)
  for k in metrics.DEPTH_METRIC_NAMES:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
    assert np.isfinite(float(got[k]))


def test_hand_computed_case():
  # gt = [1, 2, 4, NaN]; pred = [1, 3, 2, 5]: errors 0, 1, -2 on three valid pixels.
  gt = np.array([1.0, 2.0, 4.0, np.nan], np.float32)
  pred = np.array([1.0, 3.0, 2.0, 5.0], np.float32)
  got = DEPTH_METRICS(pred, gt, np.isfinite(gt))
  np.testing.assert_allclose(float(got["rmse"]), np.sqrt(5 / 3), rtol=1e-6)
  np.testing.assert_allclose(float(got["abs_rel"]), (0 + 0.5 + 0.5) / 3, rtol=1e-6)
  # RME divides by the prediction: 0/1, 1/3, 2/2.
  np.testing.assert_allclose(float(got["rme"]), (0 + 1 / 3 + 1) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(got["log10"]), (0 + np.log10(1.5) + np.log10(2)) / 3, rtol=1e-6)
  # ratios 1, 1.5, 2: delta1 counts only the first; delta2 (1.5625) two; delta3 (1.95) two.
  np.testing.assert_allclose([float(got[f"delta{i}"]) for i in (1, 2, 3)], [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)


def test_predictions_below_1mm_are_clamped_to_1mm():
  # gt = [2, 0.5]; pred = [0, 1e-4] (a dead output): both count as 1 mm = 0.001 m, so
  # ratios and logs stay finite. Written out with 0.001, not the module's constant.
  gt = np.array([2.0, 0.5], np.float32)
  pred = np.array([0.0, 1e-4], np.float32)
  got = DEPTH_METRICS(pred, gt, np.ones(2, bool))
  p = 0.001
  np.testing.assert_allclose(float(got["rmse"]), np.sqrt(((2 - p) ** 2 + (0.5 - p) ** 2) / 2),
                             rtol=1e-6)
  np.testing.assert_allclose(float(got["abs_rel"]), ((2 - p) / 2 + (0.5 - p) / 0.5) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(float(got["rme"]), ((2 - p) / p + (0.5 - p) / p) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(got["log10"]), (np.log10(2 / p) + np.log10(0.5 / p)) / 2,
                             rtol=1e-6)
  assert [float(got[f"delta{i}"]) for i in (1, 2, 3)] == [0.0, 0.0, 0.0]
  assert metrics.MIN_PREDICTED_DEPTH == 1e-3


def test_invalid_pixels_are_not_delta_failures():
  gt = np.array([2.0, np.nan, np.nan, np.nan], np.float32)
  pred = np.array([2.0, 7.0, 0.0, 5.0], np.float32)
  got = DEPTH_METRICS(pred, gt, np.isfinite(gt))
  assert float(got["delta1"]) == 1.0 and float(got["rmse"]) == 0.0


def test_all_invalid_gives_nan_not_crash():
  gt = np.full((2, 5, 7), np.nan, np.float32)
  got = DEPTH_METRICS(np.ones_like(gt), gt, np.zeros(gt.shape, bool))
  assert all(np.isnan(float(v)) for v in got.values())
  sums = DEPTH_SUMS(np.ones_like(gt), gt, np.zeros(gt.shape, bool))
  assert float(sums["count"]) == 0 and all(np.isfinite(float(v)) for v in sums.values())
  assert all(np.isnan(v) for v in metrics.finalize_depth_metrics(sums).values())


def test_accumulated_sums_equal_pooled_metrics_not_mean_of_means():
  # Two batches with very different valid-pixel counts: pooling != mean of batch means.
  p1, g1, v1 = _random_case(3, shape=(1, 5, 7), nan_frac=0.8)
  p2, g2, v2 = _random_case(4, shape=(2, 5, 7), nan_frac=0.0)
  total = None
  for p, g, v in [(p1, g1, v1), (p2, g2, v2)]:
    total = metrics.accumulate(total, DEPTH_SUMS(p, g, v))
  got = metrics.finalize_depth_metrics(total)
  pooled = numpy_depth_metrics(np.concatenate([p1.ravel(), p2.ravel()]),
                               np.concatenate([g1.ravel(), g2.ravel()]),
                               np.concatenate([v1.ravel(), v2.ravel()]))
  for k in metrics.DEPTH_METRIC_NAMES:
    np.testing.assert_allclose(got[k], pooled[k], rtol=1e-5, err_msg=k)


def test_constant_baseline_is_std_of_valid_depth():
  _, gt, valid = _random_case(5)
  rmse, mean = metrics.constant_baseline_rmse(metrics.constant_baseline_sums(gt, valid))
  v = gt[valid].astype(np.float64)
  np.testing.assert_allclose(mean, v.mean(), rtol=1e-9)
  np.testing.assert_allclose(rmse, np.sqrt(np.mean((v - v.mean()) ** 2)), rtol=1e-6)
  # No other constant does better.
  for c in (v.mean() * 0.9, v.mean() * 1.1):
    assert np.sqrt(np.mean((v - c) ** 2)) > rmse


def test_depth_sum_keys_and_rme_differs_from_abs_rel():
  pred, gt, valid = _random_case(7)
  sums = DEPTH_SUMS(pred, gt, valid)
  assert set(sums) == set(metrics.DEPTH_SUM_KEYS)
  got = metrics.finalize_depth_metrics(sums)
  assert tuple(got) == metrics.DEPTH_METRIC_NAMES
  assert abs(got["rme"] - got["abs_rel"]) > 1e-3


# ----------------------------------------------------------------------------
# Segmentation: confusion matrix, mIoU, pixel accuracy, contour F1.
# ----------------------------------------------------------------------------


def numpy_confusion(pred, target, valid, c):
  """Explicit loop over pixels; rows = ground truth, columns = prediction."""
  cm = np.zeros((c, c), np.int64)
  for p, t, v in zip(pred.ravel(), target.ravel(), valid.ravel()):
    if v and 0 <= t < c and 0 <= p < c:
      cm[t, p] += 1
  return cm


def numpy_miou_and_accuracy(pred, target, valid, c):
  """Per-class IoU from sets of pixels, over classes present in gt or prediction."""
  p, t = pred[valid], target[valid]
  if t.size == 0:
    return np.nan, np.nan
  ious = []
  for k in range(c):
    inter = np.sum((p == k) & (t == k))
    union = np.sum((p == k) | (t == k))
    if union > 0:
      ious.append(inter / union)
  return np.mean(ious), np.mean(p == t)


def _seg_case(seed, shape=(2, 5, 7), c=4, invalid_frac=0.3):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=shape + (c,)).astype(np.float32)
  target = rng.integers(0, c, shape).astype(np.int32)
  valid = rng.random(shape) >= invalid_frac
  target[~valid] = -1  # the data's "unlabelled"
  return logits, target, valid


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_matches_loop(seed):
  logits, target, valid = _seg_case(seed)
  pred = logits.argmax(-1)
  got = CONFUSION(pred, target, valid, 4)
  assert got.dtype == jnp.float32 and got.shape == (4, 4)
  np.testing.assert_array_equal(np.asarray(got), numpy_confusion(pred, target, valid, 4))
  # Garbage labels under a True mask are dropped, not counted in a wrong cell.
  target2 = target.copy()
  target2[0, 0, :] = 255
  got2 = CONFUSION(pred, target2, np.ones_like(valid), 4)
  np.testing.assert_array_equal(np.asarray(got2),
                                numpy_confusion(pred, target2, np.ones_like(valid), 4))


def test_confusion_orientation_rows_are_ground_truth():
  pred = np.array([1, 1, 0])
  target = np.array([0, 0, 0])
  cm = np.asarray(CONFUSION(pred, target, np.ones(3, bool), 2))
  np.testing.assert_array_equal(cm, [[1, 2], [0, 0]])


@pytest.mark.parametrize("seed", [2, 3])
def test_segmentation_metrics_match_numpy(seed):
  logits, target, valid = _seg_case(seed)
  sums = SEG_SUMS(logits, target, valid)
  assert set(sums) == {"confusion"}
  got = metrics.finalize_segmentation_metrics(metrics.accumulate(None, sums))
  miou, acc = numpy_miou_and_accuracy(logits.argmax(-1), target, valid, 4)
  np.testing.assert_allclose(got["miou"], miou, rtol=1e-12)
  np.testing.assert_allclose(got["pixel_accuracy"], acc, rtol=1e-12)


def test_miou_excludes_classes_absent_from_gt_and_prediction():
  # 4 classes, only 0 and 1 occur. gt [0,0,1,1], pred [0,1,1,1]:
  # IoU_0 = 1/2, IoU_1 = 2/3; classes 2 and 3 (union 0) are left out.
  pred = np.array([[0, 1, 1, 1]])
  target = np.array([[0, 0, 1, 1]])
  logits = np.eye(4, dtype=np.float32)[pred]
  got = metrics.finalize_segmentation_metrics(
      SEG_SUMS(logits, target, np.ones((1, 4), bool)))
  np.testing.assert_allclose(got["miou"], (1 / 2 + 2 / 3) / 2)
  np.testing.assert_allclose(got["pixel_accuracy"], 3 / 4)
  # A class only ever predicted (never true) counts with IoU 0.
  pred[0, 0] = 3
  got = metrics.finalize_segmentation_metrics(
      SEG_SUMS(np.eye(4, dtype=np.float32)[pred], target,
                                       np.ones((1, 4), bool)))
  np.testing.assert_allclose(got["miou"], (0 + 2 / 3 + 0) / 3)


def test_confusion_accumulates_across_batches_like_one_batch():
  l1, t1, v1 = _seg_case(4, shape=(1, 5, 7), invalid_frac=0.8)
  l2, t2, v2 = _seg_case(5, shape=(1, 5, 7), invalid_frac=0.0)
  total = None
  for lg, t, v in [(l1, t1, v1), (l2, t2, v2)]:
    total = metrics.accumulate(total, SEG_SUMS(lg, t, v))
  both = SEG_SUMS(np.concatenate([l1, l2]), np.concatenate([t1, t2]),
                                          np.concatenate([v1, v2]))
  assert total["confusion"].dtype == np.float64
  np.testing.assert_array_equal(total["confusion"], np.asarray(both["confusion"]))
  assert (metrics.finalize_segmentation_metrics(total)
          == metrics.finalize_segmentation_metrics(both))


def test_segmentation_nothing_valid_is_nan():
  logits, target, _ = _seg_case(6)
  sums = SEG_SUMS(logits, target, np.zeros(target.shape, bool))
  assert float(np.asarray(sums["confusion"]).sum()) == 0
  got = metrics.finalize_segmentation_metrics(sums)
  assert set(got) == set(metrics.SEGMENTATION_METRIC_NAMES)
  assert all(np.isnan(v) for v in got.values())
  got = metrics.finalize_contour_metrics(
      SEG_SUMS(logits[..., :2], target, np.zeros(target.shape, bool)))
  assert set(got) == set(metrics.CONTOUR_METRIC_NAMES)
  assert all(np.isnan(v) for v in got.values())


def test_contour_metrics_match_numpy():
  rng = np.random.default_rng(8)
  shape = (2, 5, 7)
  logits = rng.normal(size=shape + (2,)).astype(np.float32)
  target = (rng.random(shape) < 0.3).astype(np.int32)
  valid = rng.random(shape) > 0.2
  target[~valid] = 7  # garbage
  got = metrics.finalize_contour_metrics(SEG_SUMS(logits, target, valid))
  p, t = logits.argmax(-1)[valid] == 1, target[valid] == 1
  tp, fp, fn = np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  np.testing.assert_allclose(got["precision"], precision)
  np.testing.assert_allclose(got["recall"], recall)
  np.testing.assert_allclose(got["f1"], 2 * precision * recall / (precision + recall))
  np.testing.assert_allclose(got["pixel_accuracy"], np.mean(p == t))


def test_contour_metrics_undefined_ratios_are_nan():
  # Nothing predicted as contour and no contour in gt: precision, recall, f1 undefined.
  cm = np.array([[5.0, 0.0], [0.0, 0.0]])
  got = metrics.finalize_contour_metrics({"confusion": cm})
  assert np.isnan(got["precision"]) and np.isnan(got["recall"]) and np.isnan(got["f1"])
  assert got["pixel_accuracy"] == 1.0
  with pytest.raises(ValueError, match="2x2"):
    metrics.finalize_contour_metrics({"confusion": np.zeros((3, 3))})
