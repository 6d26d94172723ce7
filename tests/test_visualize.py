"""Colour-mapped panels: layout, shared scale, invalid pixels."""

import numpy as np

from smd_jax.evaluation import figures


def test_turbo_endpoints_and_nan():
  # Turbo runs from dark (0) through blue, green and red to dark red (1).
  lo, mid, hi = figures.turbo(np.array([0.1, 0.5, 0.9]))
  assert lo[2] > lo[0] and lo[2] > lo[1]
  assert mid[1] > mid[0] and mid[1] > mid[2]
  assert hi[0] > hi[1] and hi[0] > hi[2]
  assert figures.turbo(np.array([np.nan])).tolist() == [[0, 0, 0]]


def test_panel_layout_and_shared_scale():
  image = np.full((4, 5, 3), 7, np.uint8)
  depth = np.full((4, 5), 2.0, np.float32)
  depth[0, 0] = np.nan
  depth[3, 4] = 4.0  # the row's farthest valid depth sets the scale
  pred = depth.copy()
  pred[0, 0] = 4.0
  panel = figures.depth_panel(image, depth, pred, max_depth=15.0)
  assert panel.shape == (4, 3 * 5 + 2 * 4, 3)
  gt, pr = panel[:, 9:14], panel[:, 18:23]
  np.testing.assert_array_equal(panel[:, :5], image)
  assert gt[0, 0].tolist() == [0, 0, 0]  # invalid
  # Same depth, same colour in both maps; 4 m is the top of the scale.
  np.testing.assert_array_equal(gt[1, 1], pr[1, 1])
  np.testing.assert_array_equal(pr[0, 0], figures.turbo(np.array([1.0]))[0])
  np.testing.assert_array_equal(gt[1, 1], figures.turbo(np.array([0.5]))[0])


def test_grid_stacks_rows():
  rows = 3
  panels = [figures.depth_panel(np.zeros((4, 5, 3), np.uint8), np.ones((4, 5)) * i,
                                  np.ones((4, 5)), 15.0) for i in range(1, rows + 1)]
  grid = figures.stack_rows(panels)
  assert grid.shape == (rows * 4 + (rows - 1) * 4, 23, 3)
  np.testing.assert_array_equal(grid[8:12], panels[1])
  assert np.all(grid[4:8] == 255)
