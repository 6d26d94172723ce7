"""Per-task losses, selected by name from `LOSSES`.

A loss maps `(prediction, target, valid, **params) -> scalar`. It knows nothing
about data sets or models: the caller prepares targets and the validity mask.
`params` are optional keyword arguments whose defaults are the paper's values; a
config passes them as `config.tasks[t].loss_params`.

Conventions shared by every loss here:
* reductions run in float32, whatever the prediction's dtype (bf16 compute);
* masked-out pixels may hold NaN or garbage: they are replaced with `jnp.where`
  *before* any arithmetic, so they reach neither the value nor the gradient;
* with no valid pixel at all a loss is 0 (and so is its gradient), never NaN.

Regression losses take pred/target [B,H,W]; classification losses take logits
[B,H,W,C] and an integer class index target [B,H,W].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[..., jax.Array]


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of `values` over pixels where `valid`; 0 when none is valid (no NaN)."""
  w = valid.astype(jnp.float32)
  total = jnp.sum(jnp.where(valid, values.astype(jnp.float32), 0.0))
  return total / jnp.maximum(jnp.sum(w), 1.0)


# ----------------------------------------------------------------------------
# Regression (depth)
# ----------------------------------------------------------------------------


def _masked_abs_diff(pred, target, valid):
  """|pred - target| as float32, exactly 0 (with zero gradient) where not `valid`."""
  # `where` before the subtraction keeps NaN targets out of the gradient too.
  target = jnp.where(valid, target.astype(jnp.float32), 0.0)
  diff = pred.astype(jnp.float32) - target
  return jnp.where(valid, jnp.abs(diff), 0.0)


def l1_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean absolute error over valid pixels.

  Args:
    pred: [B,H,W] prediction. target: [B,H,W], may be NaN where not `valid`.
    valid: [B,H,W] bool.
  """
  return masked_mean(_masked_abs_diff(pred, target, valid), valid)


def berhu_loss(pred: jax.Array, target: jax.Array, valid: jax.Array, *,
               c_fraction: float = 0.2) -> jax.Array:
  """Reverse Huber (BerHu) loss, mean over valid pixels.

  Paper eq. 2 (Zwald & Lambert-Lacroix 2012; threshold from Laina et al. 2016,
  "Deeper depth prediction with fully convolutional residual networks", eq. 3):
    B(d) = |d|                    if |d| <= c
           (d^2 + c^2) / (2c)     otherwise,
  with d = pred - target and c = c_fraction * max |d| over all valid pixels of the
  batch (c_fraction = 1/5). The paper's text prints c = max{d_hat, d}/5, which we
  read as Laina's max |d_hat - d| (also what the reference code computes). The two
  branches agree in value and slope at |d| = c.

  c is a per-batch statistic (Laina et al.) and is held constant in the gradient
  (`stop_gradient`), the usual choice for data-dependent thresholds. The reference
  PyTorch code does not detach c, so there the single arg-max pixel gets an extra
  dL/dc * dc/dpred term; every other pixel's gradient is the same in both.

  When every valid difference is 0, c = 0 and every pixel takes the L1 branch
  (value 0); the quadratic branch is evaluated with c clamped away from 0 so that
  the unused branch cannot inject NaN into the gradient.

  Args:
    pred: [B,H,W]. target: [B,H,W], may be NaN where not `valid`. valid: [B,H,W] bool.
    c_fraction: c as a fraction of the batch's largest absolute error.
  """
  absd = _masked_abs_diff(pred, target, valid)
  c = jax.lax.stop_gradient(c_fraction * jnp.max(absd, initial=0.0))
  safe_c = jnp.maximum(c, jnp.finfo(jnp.float32).tiny)
  # On pixels where the quadratic branch is used, c < |d| <= c / c_fraction, so the
  # quotient stays finite even for tiny c.
  quadratic = (absd**2 + c**2) / (2.0 * safe_c)
  return masked_mean(jnp.where(absd <= c, absd, quadratic), valid)


# ----------------------------------------------------------------------------
# Classification (semantics, contours)
# ----------------------------------------------------------------------------


def _class_inputs(logits, target, valid):
  """float32 logits, in-range int targets and the effective mask, all sanitised.

  Pixels whose target lies outside [0, C) are dropped from `valid`, so garbage
  labels (e.g. -1, 255) can never index out of range, even where the caller's
  mask says valid.
  """
  num_classes = logits.shape[-1]
  target = target.astype(jnp.int32)
  valid = valid & (target >= 0) & (target < num_classes)
  # Logits of masked pixels are zeroed too: `where` passes exactly 0 gradient to
  # the unselected side, so even non-finite logits there cannot reach a gradient.
  logits = jnp.where(valid[..., None], logits.astype(jnp.float32), 0.0)
  return logits, jnp.where(valid, target, 0), valid


# The denominator of a per-pixel mean, by `normalize` name: the valid pixels, or every
# pixel of the batch (the authors' `CrossEntropyLoss(ignore_index=-1,
# reduction="none")` + `nanmean`: ignored pixels give 0, not NaN, so their mean divides
# the labelled pixels' sum by all pixels).
NORMALIZERS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "valid": lambda valid: jnp.sum(valid.astype(jnp.float32)),
    "all_pixels": lambda valid: jnp.float32(valid.size),
}


def _normalizer(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in NORMALIZERS:
    raise ValueError(f"Unknown normalize {name!r}; known: {sorted(NORMALIZERS)}.")
  return NORMALIZERS[name]


def cross_entropy_loss(logits: jax.Array, target: jax.Array, valid: jax.Array, *,
                       normalize: str = "valid") -> jax.Array:
  """Softmax cross-entropy summed over valid pixels, divided by `NORMALIZERS[normalize]`
  ("valid": a mean over valid pixels; "all_pixels": over all B*H*W pixels, as the
  authors' code computes it, i.e. the valid mean times the valid fraction).

  Args:
    logits: [B,H,W,C]. target: [B,H,W] int class index, anything where not `valid`
      (the data's -1 = unlabelled). valid: [B,H,W] bool.
  """
  denominator = _normalizer(normalize)(valid)
  logits, target, valid = _class_inputs(logits, target, valid)
  # -log softmax(logits)[target]; finite for finite logits, masked afterwards.
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
  return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(denominator, 1.0)


# Class probabilities from logits, by `activation` name.
PROBABILITIES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softmax": lambda logits: jax.nn.softmax(logits, axis=-1),
    "sigmoid": jax.nn.sigmoid,
}


def _soft_confusion(logits, target, valid, activation, unlabelled="exclude"):
  """Soft TP, FN, FP summed over every valid pixel and every class of the batch.

  With p = class probabilities and y = one-hot target (both [B,H,W,C]):
    TP = sum p*y,  FN = sum (1-p)*y,  FP = sum p*(1-y).
  The one-hot target is built on the same [B,H,W,C] layout as p. (The reference
  code transposed axes 1 and -1 of the one-hot target, comparing the prediction
  at (h, w) with the label at (w, h); that bug is not repeated here.)

  `activation`: "softmax" (default; the classes are mutually exclusive) or
  "sigmoid" (per-class independent probabilities, as the reference code used).
  Note: with softmax and sums pooled over classes, sum_c p = sum_c y = 1 per
  pixel, hence FN = FP = N - TP with N the number of valid pixels.

  `unlabelled`: "exclude" (default) leaves pixels that are not `valid` out;
  "count" keeps their predictions (all-zero target, so they add to FP), as the
  authors' code does (its one-hot target of an unlabelled pixel is all zero, its
  prediction is not masked). The logits of those pixels must then be finite.
  """
  if activation not in PROBABILITIES:
    raise ValueError(f"Unknown activation {activation!r}; use 'softmax' or 'sigmoid'.")
  if unlabelled not in ("exclude", "count"):
    raise ValueError(f"Unknown unlabelled {unlabelled!r}; use 'exclude' or 'count'.")
  raw = logits.astype(jnp.float32)
  logits, target, valid = _class_inputs(logits, target, valid)
  mask = valid[..., None]
  if unlabelled == "count":
    probs = PROBABILITIES[activation](raw)
  else:
    probs = jnp.where(mask, PROBABILITIES[activation](logits), 0.0)
  onehot = jnp.where(mask, jax.nn.one_hot(target, logits.shape[-1], dtype=jnp.float32), 0.0)
  tp = jnp.sum(probs * onehot)
  fn = jnp.sum((1.0 - probs) * onehot)
  fp = jnp.sum(probs * (1.0 - onehot))
  return tp, fn, fp


def dice_loss(logits: jax.Array, target: jax.Array, valid: jax.Array, *,
              smooth: float = 1e-4, activation: str = "softmax",
              unlabelled: str = "exclude") -> jax.Array:
  """Soft Dice loss, paper eq. 8 (Sudre et al. 2017; Milletari et al. 2016):

    L = 1 - (2 TP + smooth) / (2 TP + FN + FP + smooth),

  TP/FN/FP pooled over all valid pixels and classes of the batch (see
  `_soft_confusion`). `smooth` (1e-4, the reference code's epsilon magnitude)
  makes the ratio 1 (loss 0) when no pixel is valid instead of 0/0, and is
  negligible otherwise since the sums grow with the pixel count.

  Args:
    logits: [B,H,W,C]. target: [B,H,W] int, garbage where not `valid`.
    valid: [B,H,W] bool. activation: "softmax" or "sigmoid". unlabelled: "exclude" or
      "count" (see `_soft_confusion`).

  The authors' Dice (`loss_functions.py` of charyyev/semantic_md) is sigmoid,
  unlabelled "count", and adds its epsilon (1e-4) to TP, i.e. 2e-4 in the numerator:
  a difference of 1e-4 on sums over ~1e6 pixels, not reproduced.
  """
  tp, fn, fp = _soft_confusion(logits, target, valid, activation, unlabelled)
  return 1.0 - (2.0 * tp + smooth) / (2.0 * tp + fn + fp + smooth)


def focal_tversky_loss(logits: jax.Array, target: jax.Array, valid: jax.Array, *,
                       alpha: float = 0.7, beta: float = 0.3, gamma: float = 1.5,
                       smooth: float = 1e-4, activation: str = "softmax",
                       unlabelled: str = "exclude") -> jax.Array:
  """Focal Tversky loss, paper eq. 9 (Salehi et al. 2017; Abraham & Khan 2019):

    TI = (TP + smooth) / (TP + alpha FN + beta FP + smooth),  L = (1 - TI)^gamma,

  with the paper's alpha = 0.7 (on FN), beta = 0.3 (on FP), gamma = 1.5 used as
  the exponent exactly as eq. 9 prints it (Abraham & Khan write 1/gamma). Same
  pooled TP/FN/FP and `smooth` as `dice_loss`; no valid pixel gives TI = 1, L = 0.
  With softmax, FN = FP, so alpha and beta only matter through alpha + beta. The
  authors' code uses alpha = 0.8, beta = 1 - alpha = 0.2, sigmoid and unlabelled
  "count" (the paper rows set these).
  """
  tp, fn, fp = _soft_confusion(logits, target, valid, activation, unlabelled)
  ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
  base = 1.0 - ti
  # x^gamma only on x > 0: guards against 1 - TI rounding below 0 (NaN), and, for
  # gamma < 1 (e.g. Abraham & Khan's 1/gamma form), against the infinite slope at 0
  # (inf * 0 = NaN in the gradient when no pixel is valid or the fit is perfect).
  positive = base > 0
  return jnp.where(positive, jnp.where(positive, base, 1.0) ** gamma, 0.0)


def dice_ce_loss(logits: jax.Array, target: jax.Array, valid: jax.Array, *,
                 ce_weight: float = 1.0, other_weight: float = 1.0, normalize: str = "valid",
                 **dice_params) -> jax.Array:
  """other_weight L_dice + ce_weight L_ce (paper Sec. 4.3, after eq. 9: equally
  weighted). The authors' code: 0.5 L_ce + 0.5 L_dice (`weight_lambda` 0.5) with the CE
  `normalize`d over all pixels. `normalize` goes to the CE, `dice_params` to Dice."""
  return other_weight * dice_loss(logits, target, valid, **dice_params) + (
      ce_weight * cross_entropy_loss(logits, target, valid, normalize=normalize))


def focal_tversky_ce_loss(logits: jax.Array, target: jax.Array, valid: jax.Array, *,
                          ce_weight: float = 1.0, other_weight: float = 1.0,
                          normalize: str = "valid", **tversky_params) -> jax.Array:
  """other_weight L_ftl + ce_weight L_ce, as `dice_ce_loss`."""
  return other_weight * focal_tversky_loss(logits, target, valid, **tversky_params) + (
      ce_weight * cross_entropy_loss(logits, target, valid, normalize=normalize))


LOSSES: dict[str, LossFn] = {
    "l1": l1_loss,
    "berhu": berhu_loss,
    "ce": cross_entropy_loss,
    "dice": dice_loss,
    "focal_tversky": focal_tversky_loss,
    "dice_ce": dice_ce_loss,
    "focal_tversky_ce": focal_tversky_ce_loss,
}


def get_loss(name: str) -> LossFn:
  try:
    return LOSSES[name]
  except KeyError:
    raise ValueError(f"Unknown loss {name!r}; known losses: {sorted(LOSSES)}.") from None
