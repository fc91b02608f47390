"""Binarization and dequantization transforms (sections 4.5.2, 5.3.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from dgm_jax.data import transforms

PROBABILITIES = np.array([0.0, 0.05, 0.25, 0.5, 0.9, 1.0])


class TestDynamicBinarize:

  def test_mean_matches_probabilities(self):
    num_draws = 40_000
    x = jnp.broadcast_to(jnp.asarray(PROBABILITIES, jnp.float32), (num_draws, 6))
    draws = np.asarray(transforms.dynamic_binarize(jax.random.PRNGKey(0), x))
    assert draws.dtype == np.float32 and set(np.unique(draws)) <= {0.0, 1.0}
    tolerance = 5 * np.sqrt(PROBABILITIES * (1 - PROBABILITIES) / num_draws)
    np.testing.assert_array_less(np.abs(draws.mean(0) - PROBABILITIES), tolerance + 1e-12)

  def test_keys_give_fresh_draws(self):
    x = jnp.full((1000,), 0.5)
    first = transforms.dynamic_binarize(jax.random.PRNGKey(1), x)
    second = transforms.dynamic_binarize(jax.random.PRNGKey(2), x)
    assert 0.3 < float(jnp.mean(first != second)) < 0.7


class TestStaticBinarize:

  def test_each_example_keeps_its_draw_in_any_batch(self):
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(6, 5, 5, 1)), jnp.float32)
    index = jnp.arange(6)
    whole = transforms.static_binarize(x, index, seed=3)
    order = jnp.array([4, 0, 5])
    part = transforms.static_binarize(x[order], index[order], seed=3)
    np.testing.assert_array_equal(part, whole[order])
    assert not np.array_equal(whole, transforms.static_binarize(x, index, seed=4))

  def test_mean_over_examples_matches_probability(self):
    num_examples = 20_000
    x = jnp.full((num_examples, 1), 0.3)
    draws = transforms.static_binarize(x, jnp.arange(num_examples))
    assert abs(float(draws.mean()) - 0.3) < 5 * np.sqrt(0.21 / num_examples)


def test_fixed_binarize_thresholds():
  x = jnp.array([0.0, 0.5, 0.51, 1.0])
  np.testing.assert_array_equal(transforms.fixed_binarize(x), [0, 0, 1, 1])
  np.testing.assert_array_equal(transforms.fixed_binarize(x, threshold=0.2), [0, 1, 1, 1])


class TestUniformDequantize:

  @given(levels=st.lists(st.integers(0, 255), min_size=8, max_size=8),
         seed=st.integers(0, 2**31 - 1))
  def test_each_value_lands_in_its_own_bin(self, levels, seed):
    level = np.array(levels * 500)
    x = jnp.asarray(level / 255, jnp.float32)
    y = np.asarray(transforms.uniform_dequantize(jax.random.PRNGKey(seed), x))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 256), level)

  def test_uniform_within_the_bin(self):
    x = jnp.full((50_000,), 17 / 255, jnp.float32)
    offset = np.asarray(transforms.uniform_dequantize(jax.random.PRNGKey(0), x)) * 256 - 17
    assert abs(offset.mean() - 0.5) < 0.01 and abs(offset.var() - 1 / 12) < 0.002

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
  def test_noise_next_to_one_stays_below_the_upper_edge(self, monkeypatch, dtype):
    """u = the largest value below 1 rounds k + u up to k + 1 (float32 and float64, k >= 1)."""
    monkeypatch.setattr(transforms.jax.random, "uniform",
                        lambda key, shape, noise_dtype: jnp.full(
                            shape, jnp.nextafter(jnp.ones((), noise_dtype), 0)))
    level = np.arange(256)
    x = jnp.asarray(level / 255, dtype)
    y = np.asarray(transforms.uniform_dequantize(jax.random.PRNGKey(0), x))
    np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 256), level)
    assert y.max() < 1.0

  def test_a_level_stored_just_below_its_value_keeps_its_bin(self):
    """With 100 levels, float32 stores 8 of the k / 99 so that x * 99 falls just below k:
    the level is rounded, not floored (flooring moved them into the bin below unseen)."""
    level = np.arange(100)
    x = jnp.asarray(level / 99, jnp.float32)
    assert np.sum(np.asarray(x) * np.float32(99) < level) == 8
    y = np.asarray(transforms.uniform_dequantize(jax.random.PRNGKey(0), x, num_levels=100))
    np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 100), level)

  def test_other_level_counts(self):
    x = jnp.arange(17, dtype=jnp.float32) / 16
    y = np.asarray(transforms.uniform_dequantize(jax.random.PRNGKey(0), x, num_levels=17))
    np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 17), np.arange(17))


def test_scale_to_unit():
  y = transforms.scale_to_unit(np.array([0, 128, 255], np.uint8))
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, [0.0, 128 / 255, 1.0])
