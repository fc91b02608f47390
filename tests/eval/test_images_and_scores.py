"""The sample grid's layout (eval.images) and the active-unit count (eval.scores), each against
an answer written out by hand."""

import numpy as np

from dgm_jax.eval import images, scores


def test_image_grid_fills_rows_left_to_right_with_a_one_pixel_white_border():
  tiles = np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.1, 0.2, 0.3, 0.4, 0.5)])
  grid = images.image_grid(tiles, num_cols=3, pad=1)
  # Two rows of three 2x2 tiles, 1-pixel gaps: (2 + 1) * 2 + 1 by (2 + 1) * 3 + 1; the sixth
  # place stays white.
  expected = np.full((7, 10), 255, np.uint8)
  expected[1:3, 1:3] = 26   # round(0.1 * 255)
  expected[1:3, 4:6] = 51   # 0.2, to the right of the first
  expected[1:3, 7:9] = 76   # 0.3 (76.5 rounds to even)
  expected[4:6, 1:3] = 102  # 0.4 starts the second row
  expected[4:6, 4:6] = 128  # 0.5 (127.5 rounds to even)
  np.testing.assert_array_equal(grid, expected)


def test_image_grid_keeps_colour_clips_and_defaults_to_a_square():
  tiles = np.zeros((4, 1, 1, 3), np.float32)
  tiles[1] = [2.0, -1.0, 0.5]  # clipped to [1, 0, 0.5]
  grid = images.image_grid(tiles, pad=0)  # ceil(sqrt(4)) = 2 columns
  assert grid.shape == (2, 2, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[0, 1], [255, 0, 128])
  np.testing.assert_array_equal(grid[[0, 1, 1], [0, 0, 1]], np.zeros((3, 3)))


def test_active_units_counts_dimensions_whose_mean_varies_across_the_data():
  # Across the 4 data points the three dimensions' means have variances 0, 0.5 and 2e-3; only
  # the second passes Burda et al.'s 1e-2. (Across dimensions every row varies by far more.)
  signs = np.array([1.0, -1.0, 1.0, -1.0])
  means = np.stack([np.full(4, 3.0), np.sqrt(0.5) * signs, np.sqrt(2e-3) * signs], axis=1)
  np.testing.assert_allclose(np.var(means, axis=0), [0.0, 0.5, 2e-3], atol=1e-15)
  assert scores.active_units(means) == 1
  assert scores.active_units(means, threshold=1e-3) == 2
  assert scores.active_units(means, threshold=0.6) == 0


def test_one_data_point_has_no_active_units():
  assert scores.active_units(np.array([[5.0, -3.0, 0.0]])) == 0
