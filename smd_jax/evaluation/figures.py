"""Pictures a person can look at: colour maps, input | ground truth | prediction panels,
and the figure grid of evaluation (RGB, labels, depth, prediction, error).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from smd_jax.evaluation import passes


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


def label_colors(semantic: np.ndarray) -> np.ndarray:
  """[H,W] NYU40 ids -> [H,W,3] uint8 in HyperSim's NYU40 colours; -1, 0 and unknown ids black."""
  from tfds_hypersim import metadata  # pylint: disable=g-import-not-at-top

  palette = metadata.label_colors()  # [41, 3], row 0 black
  ids = np.asarray(semantic).astype(np.int64)
  return palette[np.where((ids >= 0) & (ids < len(palette)), ids, 0)]


# Invalid pixels of an error map: mid grey, apart from every colour of the scale.
INVALID_GREY = 128


def error_colors(error: np.ndarray, vmax: float) -> np.ndarray:
  """[H,W] absolute error (metres) -> [H,W,3] uint8, black (0) -> red -> yellow -> white (>= vmax).

  NaN (no ground truth) -> grey.
  """
  nan = ~np.isfinite(error)
  t = np.clip(np.nan_to_num(error, nan=0.0) / max(vmax, 1e-6), 0.0, 1.0)
  rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], -1)
  out = (rgb * 255 + 0.5).astype(np.uint8)
  out[nan] = INVALID_GREY
  return out


GAP = 4


def _title_band(titles: list[str], width: int, height: int, font_size: int) -> np.ndarray:
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top

  band = Image.new("RGB", (len(titles) * (width + GAP) - GAP, height), (255, 255, 255))
  draw = ImageDraw.Draw(band)
  try:
    font = ImageFont.load_default(size=font_size)
  except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
    font = ImageFont.load_default()
  for i, title in enumerate(titles):
    left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
    x = i * (width + GAP) + (width - (right - left)) // 2 - left
    draw.text((x, (height - (bottom - top)) // 2 - top), title, fill=(0, 0, 0), font=font)
  return np.asarray(band)


def figure_grid(rows: list[list[np.ndarray]], titles: list[str] | None = None,
                min_panel_width: int = 0) -> np.ndarray:
  """Panels [H,W,3] uint8 in a grid (one list per row) with white gaps and a title row.

  Every panel has the same size. Panels narrower than `min_panel_width` are
  enlarged by an integer factor (pixel repetition, no smoothing). Titles, if
  given, are drawn centred above the columns in a white band (text size follows
  the panel width).
  """
  factor = max(1, -(-int(min_panel_width) // rows[0][0].shape[1]))
  if factor > 1:
    rows = [[np.repeat(np.repeat(p, factor, axis=0), factor, axis=1) for p in row]
            for row in rows]
  h, w = rows[0][0].shape[:2]
  body = stack_rows([np.concatenate(sum(([p, np.full((h, GAP, 3), 255, np.uint8)]
                                         for p in row), [])[:-1], axis=1) for row in rows])
  if not titles:
    return body
  font_size = int(np.clip(w // 6, 8, 20))
  band = _title_band(list(titles), w, font_size + 6, font_size)
  return np.concatenate([band, np.full((GAP // 2, body.shape[1], 3), 255, np.uint8), body])


# Figure panels are enlarged (pixel repetition) to at least this width, so small
# training crops stay visible and the titles fit.
FIGURE_MIN_PANEL_WIDTH = 128


def figure(batch: dict[str, np.ndarray], depth_pred: np.ndarray, *, max_depth: float,
           semantic_input: bool, semantic_pred: np.ndarray | None = None,
           rows: Sequence[int] | None = None) -> np.ndarray:
  """Figure grid, a row per example: RGB | labels | ground truth | prediction | |error|.

  `labels` is the semantic label map (titled 'semantic in' when the model takes
  it as input). Depth maps share the row's scale (0 to its farthest ground truth,
  as `depth_panel`; black = invalid). The error map
  |prediction - ground truth| uses one scale for the whole grid, 0 to the 99th
  percentile of the shown errors (in its title; grey = no ground truth). With a
  semantic head, its predicted labels follow. Panels narrower than
  `FIGURE_MIN_PANEL_WIDTH` are enlarged by an integer factor.
  """
  rows = list(range(len(depth_pred))) if rows is None else list(rows)
  gts = [np.clip(batch["depth"][i], 0, max_depth) for i in rows]
  errors = [np.abs(depth_pred[i] - gt) for i, gt in zip(rows, gts)]
  shown = np.concatenate([e[np.isfinite(e)] for e in errors] + [np.zeros(0)])
  err_max = max(float(np.percentile(shown, 99)), 0.01) if shown.size else 1.0
  grid = []
  for i, gt, err in zip(rows, gts, errors):
    valid = np.isfinite(gt)
    vmax = max(min(float(gt[valid].max()), max_depth) if valid.any() else max_depth, 1e-3)
    row = [batch["image"][i], label_colors(batch["semantic"][i]),
           turbo(gt / vmax), turbo(depth_pred[i] / vmax),
           error_colors(err, err_max)]
    if semantic_pred is not None:
      row.append(label_colors(semantic_pred[i]))
    grid.append(row)
  titles = ["RGB", "semantic in" if semantic_input else "labels", "GT depth", "predicted",
            f"|err|<{err_max:.2g}m"] + (["pred. labels"] if semantic_pred is not None else [])
  return figure_grid(grid, titles, min_panel_width=FIGURE_MIN_PANEL_WIDTH)


def prediction_figures(steps, state, source: Sequence, *, num_images: int, batch_size: int,
                       mesh, max_depth: float, semantic_input: bool
                       ) -> tuple[list[np.ndarray], np.ndarray]:
  """Panels (input | ground truth | prediction, `depth_panel`) of the first
  `num_images` examples, and the figure grid (`figure`) of the same, from one `predict_step`."""
  batch = passes.first_batch(source, num_images, batch_size)
  pred = passes.global_outputs(steps.predict_step, state, batch, mesh)
  keep = batch["mask"].nonzero()[0]
  panels = [depth_panel(batch["image"][i], np.clip(batch["depth"][i], 0, max_depth),
                                  pred[i], max_depth) for i in keep]
  grid = figure(batch, pred, max_depth=max_depth, semantic_input=semantic_input, rows=keep)
  return panels, grid
