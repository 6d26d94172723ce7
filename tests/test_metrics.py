"""Depth metrics and losses against an independent NumPy implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smd_jax import losses, metrics


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
  got = jax.jit(metrics.depth_metrics)(pred, gt, valid)
  want = numpy_depth_metrics(pred, gt, valid)
  for k in metrics.DEPTH_METRIC_NAMES:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
    assert np.isfinite(float(got[k]))


def test_hand_computed_case():
  # gt = [1, 2, 4, NaN]; pred = [1, 3, 2, 5]: errors 0, 1, -2 on three valid pixels.
  gt = np.array([1.0, 2.0, 4.0, np.nan], np.float32)
  pred = np.array([1.0, 3.0, 2.0, 5.0], np.float32)
  got = metrics.depth_metrics(pred, gt, np.isfinite(gt))
  np.testing.assert_allclose(float(got["rmse"]), np.sqrt(5 / 3), rtol=1e-6)
  np.testing.assert_allclose(float(got["abs_rel"]), (0 + 0.5 + 0.5) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(got["log10"]), (0 + np.log10(1.5) + np.log10(2)) / 3, rtol=1e-6)
  # ratios 1, 1.5, 2: delta1 counts only the first; delta2 (1.5625) two; delta3 (1.95) two.
  np.testing.assert_allclose([float(got[f"delta{i}"]) for i in (1, 2, 3)], [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)


def test_invalid_pixels_are_not_delta_failures():
  gt = np.array([2.0, np.nan, np.nan], np.float32)
  pred = np.array([2.0, 7.0, 0.0], np.float32)
  got = metrics.depth_metrics(pred, gt, np.isfinite(gt))
  assert float(got["delta1"]) == 1.0 and float(got["rmse"]) == 0.0


def test_all_invalid_gives_nan_not_crash():
  gt = np.full((2, 3, 3), np.nan, np.float32)
  got = jax.jit(metrics.depth_metrics)(np.ones_like(gt), gt, np.zeros(gt.shape, bool))
  assert all(np.isnan(float(v)) for v in got.values())
  sums = metrics.depth_metric_sums(np.ones_like(gt), gt, np.zeros(gt.shape, bool))
  assert float(sums["count"]) == 0 and all(np.isfinite(float(v)) for v in sums.values())
  assert all(np.isnan(v) for v in metrics.finalize_depth_metrics(sums).values())


def test_accumulated_sums_equal_pooled_metrics_not_mean_of_means():
  # Two batches with very different valid-pixel counts: pooling != mean of batch means.
  p1, g1, v1 = _random_case(3, shape=(1, 4, 4), nan_frac=0.8)
  p2, g2, v2 = _random_case(4, shape=(3, 6, 6), nan_frac=0.0)
  total = None
  for p, g, v in [(p1, g1, v1), (p2, g2, v2)]:
    total = metrics.accumulate(total, jax.jit(metrics.depth_metric_sums)(p, g, v))
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


def test_masked_l1_matches_numpy_and_has_finite_grad():
  pred, gt, valid = _random_case(6)
  got = losses.get_loss("l1")(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(valid))
  np.testing.assert_allclose(float(got), np.mean(np.abs(pred[valid] - gt[valid])), rtol=1e-6)
  grad = jax.grad(lambda p: losses.l1_loss(p, gt, valid))(jnp.asarray(pred))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~valid] == 0)


def test_l1_all_invalid_is_zero():
  x = np.zeros((2, 3), np.float32)
  assert float(losses.l1_loss(x, x * np.nan, x > 1)) == 0.0


def test_unknown_loss_name_lists_known():
  with pytest.raises(ValueError, match="l1"):
    losses.get_loss("l2_typo")
