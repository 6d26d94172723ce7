"""Losses against independent NumPy implementations (float64, plain loops/numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smd_jax import losses

SHAPE = (2, 5, 7)  # non-square on purpose
C = 4


# ----------------------------------------------------------------------------
# NumPy references (do not call the code under test).
# ----------------------------------------------------------------------------


def np_berhu(pred, gt, valid):
  """Paper eq. 2 with Laina et al.'s c = max|d| / 5 over the batch's valid pixels."""
  d = pred[valid].astype(np.float64) - gt[valid].astype(np.float64)
  if d.size == 0:
    return 0.0
  a = np.abs(d)
  c = 0.2 * a.max()
  if c == 0:
    return 0.0
  return float(np.mean(np.where(a <= c, a, (d**2 + c**2) / (2 * c))))


def np_berhu_grad(pred, gt, valid):
  """d/dpred with c held constant: sign(d) in the L1 region, d / c in the L2 region."""
  d = pred.astype(np.float64) - np.where(valid, gt, 0.0)
  n = valid.sum()
  c = 0.2 * np.abs(d[valid]).max()
  g = np.where(np.abs(d) <= c, np.sign(d), d / c) / n
  return np.where(valid, g, 0.0)


def np_softmax(logits):
  z = logits.astype(np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def np_ce(logits, target, valid):
  """Mean -log softmax(logits)[target] over valid pixels, explicit loop."""
  p = np_softmax(np.where(valid[..., None], logits, 0.0))
  vals = [-np.log(p[idx][target[idx]]) for idx in zip(*np.nonzero(valid))]
  return float(np.mean(vals)) if vals else 0.0


def np_ce_grad(logits, target, valid):
  """(softmax - onehot) / N on valid pixels, 0 elsewhere."""
  p = np_softmax(np.where(valid[..., None], logits, 0.0))
  onehot = np.eye(logits.shape[-1])[np.where(valid, target, 0)]
  return np.where(valid[..., None], (p - onehot) / valid.sum(), 0.0)


def np_soft_counts(logits, target, valid, activation="softmax"):
  """TP, FN, FP pooled over valid pixels and classes; pixel (b, h, w) vs label (b, h, w)."""
  if activation == "softmax":
    probs = np_softmax(np.where(valid[..., None], logits, 0.0))
  else:
    probs = 1.0 / (1.0 + np.exp(-np.where(valid[..., None], logits, 0.0).astype(np.float64)))
  tp = fn = fp = 0.0
  b_, h_, w_, c_ = logits.shape
  for b in range(b_):
    for h in range(h_):
      for w in range(w_):
        if not valid[b, h, w]:
          continue
        for k in range(c_):
          p, y = probs[b, h, w, k], float(target[b, h, w] == k)
          tp += p * y
          fn += (1 - p) * y
          fp += p * (1 - y)
  return tp, fn, fp


def np_dice(logits, target, valid, smooth=1e-4, activation="softmax"):
  tp, fn, fp = np_soft_counts(logits, target, valid, activation)
  return 1 - (2 * tp + smooth) / (2 * tp + fn + fp + smooth)


def np_focal_tversky(logits, target, valid, alpha=0.7, beta=0.3, gamma=1.5, smooth=1e-4,
                     activation="softmax"):
  tp, fn, fp = np_soft_counts(logits, target, valid, activation)
  return (1 - (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)) ** gamma


def np_numerical_grad(f, x, points, h=1e-6):
  """Central differences of a float64 NumPy function at a few coordinates."""
  out = []
  for idx in points:
    xp, xm = x.astype(np.float64).copy(), x.astype(np.float64).copy()
    xp[idx] += h
    xm[idx] -= h
    out.append((f(xp) - f(xm)) / (2 * h))
  return np.array(out)


# ----------------------------------------------------------------------------
# Test data: invalid pixels hold NaN / -1 / garbage.
# ----------------------------------------------------------------------------


def _depth_case(seed, shape=SHAPE, nan_frac=0.25):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0.05, 1.0, shape).astype(np.float32)
  pred = (gt + rng.normal(0, 0.2, shape)).astype(np.float32)
  gt[rng.random(shape) < nan_frac] = np.nan
  return pred, gt, np.isfinite(gt)


def _class_case(seed, shape=SHAPE, c=C, invalid_frac=0.3):
  rng = np.random.default_rng(seed)
  logits = (2 * rng.normal(size=shape + (c,))).astype(np.float32)
  target = rng.integers(0, c, shape).astype(np.int32)
  valid = rng.random(shape) >= invalid_frac
  target[~valid] = rng.choice([-1, 255, 10**6], size=(~valid).sum())
  return logits, target, valid


CLASS_LOSSES = ["ce", "dice", "focal_tversky", "dice_ce", "focal_tversky_ce"]

# Jitted (compiled once per shape and params) versions for the tests below.
# Shared jitted value-and-grad functions (a fresh jax.jit(jax.value_and_grad(f)) recompiles).
REGRESSION_VG = {n: jax.jit(jax.value_and_grad(losses.get_loss(n))) for n in ("l1", "berhu")}
# Numeric params are traced, so changing them does not recompile; only `activation` is static.
DICE = jax.jit(losses.dice_loss, static_argnames=("activation",))
FTL = jax.jit(losses.focal_tversky_loss, static_argnames=("activation",))


@jax.jit
def all_class_losses(logits, target, valid):
  """{name: (value, d value / d logits)} for every classification loss, one compile."""
  return {n: jax.value_and_grad(losses.get_loss(n))(logits, target, valid) for n in CLASS_LOSSES}


def np_class_loss(name, logits, target, valid):
  return {
      "ce": np_ce,
      "dice": np_dice,
      "focal_tversky": np_focal_tversky,
      "dice_ce": lambda *a: np_dice(*a) + np_ce(*a),
      "focal_tversky_ce": lambda *a: np_focal_tversky(*a) + np_ce(*a),
  }[name](logits, target, valid)


# ----------------------------------------------------------------------------
# Regression losses.
# ----------------------------------------------------------------------------


def test_masked_l1_matches_numpy_and_has_finite_grad():
  pred, gt, valid = _depth_case(6)
  got, grad = REGRESSION_VG["l1"](pred, gt, valid)
  np.testing.assert_allclose(float(got), np.mean(np.abs(pred[valid] - gt[valid])), rtol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~valid] == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_berhu_matches_numpy(seed):
  pred, gt, valid = _depth_case(seed)
  got, _ = REGRESSION_VG["berhu"](pred, gt, valid)
  np.testing.assert_allclose(float(got), np_berhu(pred, gt, valid), rtol=1e-5)
  # Both branches are exercised.
  a = np.abs(pred - gt)[valid]
  assert np.any(a <= 0.2 * a.max()) and np.any(a > 0.2 * a.max())


def test_berhu_grad_is_hand_derived_with_constant_c():
  pred, gt, valid = _depth_case(3)
  _, grad = REGRESSION_VG["berhu"](pred, gt, valid)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~valid] == 0)
  np.testing.assert_allclose(np.asarray(grad), np_berhu_grad(pred, gt, valid), rtol=1e-4,
                             atol=1e-7)


def test_berhu_all_exact_is_zero_without_nan():
  gt = np.full(SHAPE, 0.5, np.float32)
  gt[0, 0, 0] = np.nan
  valid = np.isfinite(gt)
  pred = np.where(valid, gt, 3.0).astype(np.float32)
  value, grad = REGRESSION_VG["berhu"](pred, gt, valid)
  assert float(value) == 0.0
  # d|x|/dx at 0 is a subgradient in [-1, 1] (JAX picks +1); scaled by 1/N, finite.
  grad = np.asarray(grad)
  assert np.all(np.abs(grad) <= 1.0 / valid.sum() + 1e-9) and np.all(grad[~valid] == 0)


def test_berhu_c_fraction_param():
  pred, gt, valid = _depth_case(4)
  # c_fraction = 1: c = max |d|, every pixel in the L1 branch.
  got = jax.jit(lambda *a: losses.berhu_loss(*a, c_fraction=1.0))(pred, gt, valid)
  np.testing.assert_allclose(float(got), np.mean(np.abs(pred - gt)[valid]), rtol=1e-6)


# ----------------------------------------------------------------------------
# Classification losses.
# ----------------------------------------------------------------------------


def test_class_losses_match_numpy():
  logits, target, valid = _class_case(0)
  got = all_class_losses(logits, target, valid)
  for name in CLASS_LOSSES:
    np.testing.assert_allclose(float(got[name][0]), np_class_loss(name, logits, target, valid),
                               rtol=1e-5, err_msg=name)


def test_ce_grad_is_softmax_minus_onehot():
  logits, target, valid = _class_case(1)
  grad = all_class_losses(logits, target, valid)["ce"][1]
  np.testing.assert_allclose(np.asarray(grad), np_ce_grad(logits, target, valid), atol=1e-7)


def test_region_loss_grads_match_finite_difference():
  logits, target, valid = _class_case(2, shape=(1, 3, 4), c=3)
  combos = [(n, a) for n in ("dice", "focal_tversky") for a in ("softmax", "sigmoid")]
  grads = jax.jit(lambda x: [jax.grad(lambda y: losses.get_loss(n)(y, target, valid,
                                                                   activation=a))(x)
                             for n, a in combos])(logits)  # one compile for all four
  v = np.argwhere(valid)
  points = [tuple(v[0]) + (0,), tuple(v[1]) + (2,), tuple(v[-1]) + (1,)]
  for (name, activation), grad in zip(combos, grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.all(grad[~valid] == 0)
    np_fn = {"dice": np_dice, "focal_tversky": np_focal_tversky}[name]
    want = np_numerical_grad(lambda x: np_fn(x, target, valid, activation=activation), logits,
                             points)
    np.testing.assert_allclose([grad[p] for p in points], want, rtol=1e-3, atol=1e-6,
                               err_msg=f"{name} {activation}")


def _tiny_case(probs_fn):
  # Three pixels in a 1x1x3 image, C = 2: targets 0, 1 and an unlabelled one (-1)
  # whose logits are NaN and must not matter.
  target = np.array([[[0, 1, -1]]], np.int32)
  valid = target >= 0
  logits = np.full((1, 1, 3, 2), np.nan, np.float32)
  logits[0, 0, :2] = probs_fn
  return logits, target, valid


def test_dice_and_tversky_hand_computed_softmax():
  # softmax probabilities [0.8, 0.2] (label 0) and [0.4, 0.6] (label 1):
  # TP = 0.8 + 0.6 = 1.4, FN = 0.2 + 0.4 = 0.6, FP = 0.2 + 0.4 = 0.6.
  logits, target, valid = _tiny_case(np.log([[0.8, 0.2], [0.4, 0.6]]))
  dice = DICE(logits, target, valid, smooth=0.0)
  np.testing.assert_allclose(float(dice), 1 - 2.8 / (2.8 + 1.2), rtol=1e-6)  # 0.3
  np.testing.assert_allclose(float(DICE(logits, target, valid)), 0.3, atol=1e-4)
  ftl = FTL(logits, target, valid, smooth=0.0)
  # TI = 1.4 / (1.4 + 0.7 * 0.6 + 0.3 * 0.6) = 0.7; L = 0.3 ** 1.5.
  np.testing.assert_allclose(float(ftl), 0.3**1.5, rtol=1e-5)
  # The NaN logits of the unlabelled pixel reach no gradient (one compile for all three).
  total = lambda x: (losses.dice_loss(x, target, valid) + losses.focal_tversky_loss(x, target, valid)
                     + losses.cross_entropy_loss(x, target, valid))
  grad = np.asarray(jax.jit(jax.grad(total))(logits))
  assert np.all(np.isfinite(grad)) and np.all(grad[~valid] == 0)


def test_dice_and_tversky_hand_computed_sigmoid():
  # sigmoid probabilities [0.8, 0.6] (label 0) and [0.1, 0.7] (label 1):
  # TP = 0.8 + 0.7 = 1.5, FN = 0.2 + 0.3 = 0.5, FP = 0.6 + 0.1 = 0.7.
  p = np.array([[0.8, 0.6], [0.1, 0.7]])
  logits, target, valid = _tiny_case(np.log(p / (1 - p)))
  dice = DICE(logits, target, valid, smooth=0.0, activation="sigmoid")
  np.testing.assert_allclose(float(dice), 1 - 3.0 / 4.2, rtol=1e-6)
  ftl = FTL(logits, target, valid, smooth=0.0, activation="sigmoid")
  np.testing.assert_allclose(float(ftl), (1 - 1.5 / (1.5 + 0.7 * 0.5 + 0.3 * 0.7)) ** 1.5,
                             rtol=1e-5)
  # alpha weighs FN, beta weighs FP: swapping them changes the value here (FN != FP).
  swapped = FTL(logits, target, valid, alpha=0.3, beta=0.7, smooth=0.0,
                                      activation="sigmoid")
  np.testing.assert_allclose(float(swapped), (1 - 1.5 / (1.5 + 0.3 * 0.5 + 0.7 * 0.7)) ** 1.5,
                             rtol=1e-5)


@jax.jit
def dice_both_activations(logits, target, valid):
  return [losses.dice_loss(logits, target, valid, activation=a) for a in ("softmax", "sigmoid")]


def test_dice_does_not_transpose_target():
  """The reference transposed the one-hot target's H and W; ours compares (h, w) to (h, w)."""
  # Non-square: only the un-transposed comparison is even defined; the loop reference
  # indexes the same (b, h, w) in prediction and label.
  logits, target, valid = _class_case(5, shape=(2, 3, 6))
  for activation, got in zip(("softmax", "sigmoid"), dice_both_activations(logits, target, valid)):
    np.testing.assert_allclose(float(got), np_dice(logits, target, valid, activation=activation),
                               rtol=1e-5, err_msg=activation)
  # Square with an asymmetric pattern: prediction matches the target, not its transpose.
  target = np.array([[[0, 1, 1], [0, 0, 1], [2, 2, 0]]], np.int32)
  assert np.any(target != target.swapaxes(1, 2))
  logits = (6.0 * np.eye(3)[target] - 3.0).astype(np.float32)
  valid = np.ones(target.shape, bool)
  rights = dice_both_activations(logits, target, valid)
  transposeds = dice_both_activations(logits, target.swapaxes(1, 2), valid)
  for activation, right, transposed in zip(("softmax", "sigmoid"), rights, transposeds):
    right, transposed = float(right), float(transposed)
    np.testing.assert_allclose(right, np_dice(logits, target, valid, activation=activation),
                               rtol=1e-5, err_msg=activation)
    assert right < 0.1 and transposed > right + 0.1, activation


def test_class_losses_no_valid_pixel_is_zero():
  logits, target, _ = _class_case(6)
  logits[0, 0, 0] = np.nan  # even NaN logits on masked pixels stay out
  valid = np.zeros(target.shape, bool)
  for name, (value, grad) in all_class_losses(logits, target, valid).items():
    assert float(value) == 0.0, name
    assert np.all(np.asarray(grad) == 0), name
  # Also with gamma < 1, where d/dx x^gamma is infinite at x = 1 - TI = 0.
  value, grad = jax.jit(jax.value_and_grad(
      lambda x: losses.focal_tversky_loss(x, target, valid, gamma=0.5)))(logits)
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("name", ["l1", "berhu"])
def test_regression_losses_no_valid_pixel_is_zero(name):
  pred = np.full(SHAPE, np.nan, np.float32)
  gt = np.full(SHAPE, np.nan, np.float32)
  value, grad = REGRESSION_VG[name](pred, gt, np.zeros(SHAPE, bool))
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)


def test_class_losses_ignore_masked_garbage():
  """Changing logits and labels on invalid pixels changes neither value nor gradient."""
  logits, target, valid = _class_case(7)
  logits2, target2 = logits.copy(), target.copy()
  logits2[~valid] = np.nan
  target2[~valid] = -7
  got1 = all_class_losses(logits, target, valid)
  got2 = all_class_losses(logits2, target2, valid)
  for name in CLASS_LOSSES:
    (v1, g1), (v2, g2) = got1[name], got2[name]
    assert float(v1) == float(v2), name
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2), err_msg=name)
    assert np.all(np.asarray(g2)[~valid] == 0), name


def test_combined_losses_are_equally_weighted_sums_and_forward_params():
  logits, target, valid = _class_case(8)

  @jax.jit
  def parts(x, t, v):
    return (losses.cross_entropy_loss(x, t, v), losses.dice_loss(x, t, v, smooth=1.0),
            losses.get_loss("dice_ce")(x, t, v, smooth=1.0),
            losses.focal_tversky_loss(x, t, v, gamma=1.0),
            losses.get_loss("focal_tversky_ce")(x, t, v, gamma=1.0))

  ce, dice, dice_ce, ftl, ftl_ce = map(float, parts(logits, target, valid))
  np.testing.assert_allclose(dice_ce, dice + ce, rtol=1e-6)
  np.testing.assert_allclose(ftl_ce, ftl + ce, rtol=1e-6)
  # The params reach the region loss: they change its value.
  np.testing.assert_allclose(dice, np_dice(logits, target, valid, smooth=1.0), rtol=1e-5)
  np.testing.assert_allclose(ftl, np_focal_tversky(logits, target, valid, gamma=1.0), rtol=1e-5)


def test_bf16_logits_reduce_in_float32():
  """bf16 logits (a bf16 model's heads): the loss is float32 and equals the float64 NumPy
  loss of the same bf16 values to float32 accuracy (rtol 1e-5, as for f32 logits above);
  any step taken in bf16 would be off by about its rounding, 2^-9 relative or more."""
  logits, target, valid = _class_case(9, shape=(2, 16, 16))
  logits = jnp.asarray(logits, jnp.bfloat16)
  exact = np.asarray(logits.astype(jnp.float32), np.float64)
  got = all_class_losses(logits, target, valid)
  for name in CLASS_LOSSES:
    value, grad = got[name]
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16, name
    np.testing.assert_allclose(float(value), np_class_loss(name, exact, target, valid),
                               rtol=1e-5, err_msg=name)


def test_registry():
  assert set(losses.LOSSES) >= {"l1", "berhu", *CLASS_LOSSES}
  with pytest.raises(ValueError, match="l1"):
    losses.get_loss("l2_typo")


def test_l1_all_invalid_is_zero():
  x = np.zeros(SHAPE, np.float32)
  assert float(REGRESSION_VG["l1"](x, x * np.nan, x > 1)[0]) == 0.0


# ----------------------------------------------------------------------------
# The authors' semantic losses (charyyev/semantic_md loss_functions.py and trainers,
# as described in docs/results.md), in NumPy, against the paper rows' loss_params.
# ----------------------------------------------------------------------------


def np_authors_ce(logits, target, labelled):
  """CrossEntropyLoss(ignore_index=-1, reduction='none') then nanmean: ignored pixels
  contribute 0 and count in the denominator (all B*H*W pixels)."""
  p = np_softmax(logits)
  total = sum(-np.log(p[idx][target[idx]]) for idx in zip(*np.nonzero(labelled)))
  return total / labelled.size


def np_authors_region(logits, target, labelled, kind, alpha=0.8, eps=1e-4):
  """Their Dice / Focal Tversky: sigmoid of every pixel's logits; target one-hot of the
  labelled pixels (all zero for unlabelled ones); global sums. Their epsilon goes into
  TP (Dice: 2 (I + eps) / (sum p + sum y + eps)); ours once into numerator and
  denominator, a 1e-4 difference on these sums, covered by the tolerance below."""
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  y = np.where(labelled[..., None], np.eye(logits.shape[-1])[np.where(labelled, target, 0)], 0.0)
  tp = np.sum(p * y)
  if kind == "dice":
    return 1 - 2 * (tp + eps) / (p.sum() + y.sum() + eps)
  fn, fp = np.sum((1 - p) * y), np.sum(p * (1 - y))
  return (1 - (tp + eps) / (tp + alpha * fn + (1 - alpha) * fp + eps)) ** 1.5


@pytest.mark.parametrize("row", ["unet_2head", "unet_2head_dice", "unet_2head_dice_ce",
                                 "unet_2head_ftl_ce", "deeplab_2head_dice_ce"])
def test_paper_rows_use_the_authors_semantic_losses(row):
  from smd_jax.training import sweep  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "paper", f"{row}.py")
  task = sweep.load_config_file(path).tasks.semantic
  logits, target, labelled = _class_case(10)
  target = np.where(labelled, target, -1)
  want = {
      "ce": lambda: np_authors_ce(logits, target, labelled),
      "dice": lambda: np_authors_region(logits, target, labelled, "dice"),
      "dice_ce": lambda: 0.5 * np_authors_ce(logits, target, labelled)
                         + 0.5 * np_authors_region(logits, target, labelled, "dice"),
      "focal_tversky_ce": lambda: 0.5 * np_authors_ce(logits, target, labelled)
                                  + 0.5 * np_authors_region(logits, target, labelled, "ftl"),
  }[task.loss]()
  got = losses.get_loss(task.loss)(logits, target, labelled, **dict(task.loss_params))
  # float32 sums of ~300 terms of size ~1 (rtol 1e-5) plus the epsilon placement (1e-4
  # on sums of ~100: < 2e-6 absolute).
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=5e-6)


def test_ce_normalisers():
  logits, target, valid = _class_case(11)
  mean = float(losses.cross_entropy_loss(logits, target, valid))
  over_all = float(losses.cross_entropy_loss(logits, target, valid, normalize="all_pixels"))
  np.testing.assert_allclose(over_all, mean * valid.sum() / valid.size, rtol=1e-6)
  with pytest.raises(ValueError, match="all_pixels"):
    losses.cross_entropy_loss(logits, target, valid, normalize="labelled")
