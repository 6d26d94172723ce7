"""Pictures a person can look at: input | ground truth | prediction, colour-mapped."""

from __future__ import annotations

import numpy as np

# Turbo colour map as a polynomial fit (Mikhailov, "Turbo, An Improved Rainbow
# Colormap", Google AI Blog 2019; fit by Ruofei Du). Coefficients for t^0..t^5.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],  # red
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],  # green
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],  # blue
])


def turbo(t: np.ndarray) -> np.ndarray:
  """[...] values in [0,1] -> [..., 3] uint8 colours; NaN -> black."""
  nan = ~np.isfinite(t)
  t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)
  powers = np.stack([t**i for i in range(6)], axis=-1)
  rgb = np.clip(powers @ _TURBO.T, 0.0, 1.0)
  rgb[nan] = 0.0
  return (rgb * 255 + 0.5).astype(np.uint8)


def depth_panel(image: np.ndarray, depth: np.ndarray, pred: np.ndarray,
                max_depth: float) -> np.ndarray:
  """One row: RGB [H,W,3] uint8 | ground truth | prediction, depths [H,W] in metres.

  Both depth maps share one scale, 0 to the row's farthest valid ground truth
  (at most `max_depth`), so colours compare within a row and use the whole map;
  invalid ground-truth pixels are black.
  """
  valid = np.isfinite(depth)
  vmax = min(float(depth[valid].max()), max_depth) if valid.any() else max_depth
  vmax = max(vmax, 1e-3)
  gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
  return np.concatenate([image, gap, turbo(depth / vmax), gap, turbo(pred / vmax)], axis=1)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
  """Panels [H,W,3] stacked vertically with white gaps."""
  gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
  out = [rows[0]]
  for r in rows[1:]:
    out += [gap, r]
  return np.concatenate(out, axis=0)
