"""``dgm_jax.train.writers``: the workdir's files are written whole, at the names asked for."""
import os

import numpy as np

from dgm_jax.train import writers


def test_write_npz_writes_exactly_the_path_and_replaces_a_previous_file(tmp_path):
  path = str(tmp_path / "decoder_nll_per_image.npz")
  writers.write_npz(path, {"own": np.arange(3.0), "laplace": np.ones(3)})
  writers.write_npz(path, {"own": np.array([95.5, 93.25]), "laplace": np.zeros(2)})
  assert sorted(os.listdir(tmp_path)) == ["decoder_nll_per_image.npz"]  # no .tmp, no .npz.npz
  saved = np.load(path)
  np.testing.assert_array_equal(saved["own"], [95.5, 93.25])
  np.testing.assert_array_equal(saved["laplace"], [0.0, 0.0])
