"""Markdown tables of results: the paper's columns beside its published rows, and
the depth breakdown by region.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from smd_jax import paper
from smd_jax.evaluation import breakdown


# Extra metrics shown after the depth columns when a run has them.
EXTRA_COLUMNS = (("semantic/miou", "sem. mIoU"), ("semantic/pixel_accuracy", "sem. acc"),
                 ("contours/f1", "contour F1"), ("depth_edges/f1", "edge F1"))


def _fmt(value) -> str:
  """Three decimals; a dash where there is no (finite) value."""
  return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def markdown_table(results: dict[str, dict | None], configs: dict[str, object], *,
                   extra_columns=EXTRA_COLUMNS, published: bool = True) -> str:
  """One 'ours' row per config (and the paper's row below it where published).

  `extra_columns`: (result key, header) pairs shown after the paper's columns
  where some run has the key. `published=False` leaves the paper's rows out
  (they are validation-split numbers).
  """
  extras = [(k, h) for k, h in extra_columns
            if any(r and r.get(k) is not None for r in results.values())]
  header = ["config", "source", "steps"] + [h for _, h in paper.COLUMNS] + [h for _, h in extras]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, result in results.items():
    result = result or {}
    ours = [name, "ours", str(result.get("step", "–"))]
    ours += [_fmt(result.get(f"depth/{k}")) for k, _ in paper.COLUMNS]
    ours += [_fmt(result.get(k)) for k, _ in extras]
    lines.append("| " + " | ".join(ours) + " |")
    row = paper.PUBLISHED.get(configs[name].get("paper_row") or "") if published else None
    if row:
      published = ["", f"paper T{row.table} {row.name}", "15 ep."]
      published += [_fmt(getattr(row, k)) for k, _ in paper.COLUMNS] + [""] * len(extras)
      lines.append("| " + " | ".join(published) + " |")
  return "\n".join(lines) + "\n"


def breakdown_table(results: Mapping[str, float]) -> str:
  """The breakdown of one evaluation: a row per region, the paper's columns, pixel share."""
  regions = []
  for key in results:
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == breakdown.PREFIX and parts[1] not in regions:
      regions.append(parts[1])
  regions.sort(key=breakdown.region_order)
  header = ["region", "pixels"] + [h for _, h in paper.COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for region in regions:
    get = lambda k: results.get(f"{breakdown.PREFIX}/{region}/{k}")  # pylint: disable=cell-var-from-loop
    fraction = get("fraction")
    share = "–" if fraction is None or not np.isfinite(fraction) else f"{100 * fraction:.1f}%"
    lines.append("| " + " | ".join([region, share] + [_fmt(get(k)) for k, _ in paper.COLUMNS])
                 + " |")
  return "\n".join(lines) + "\n"
