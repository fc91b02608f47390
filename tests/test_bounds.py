"""Bounds against an analytic linear-Gaussian model (log p(x) known exactly)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, strategies as st

from dgm_jax import bounds, likelihoods as lk

finite = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def linear_gaussian(x, a, noise_std, q_mean, q_std, key, num_reps, k):
  """log w for z ~ q = N(q_mean, q_std^2) under z ~ N(0,1), x|z ~ N(a z, noise_std^2)."""
  z = q_mean + q_std * jax.random.normal(key, (k, num_reps))
  log_joint = (lk.gaussian_log_prob(z, 0.0, 0.0)
               + lk.gaussian_log_prob(x, a * z, 2 * jnp.log(noise_std)))
  log_q = lk.gaussian_log_prob(z, q_mean, 2 * jnp.log(q_std))
  log_px = scipy.stats.norm.logpdf(x, 0.0, np.sqrt(a**2 + noise_std**2))
  return log_joint, log_q, log_px


def exact_posterior(x, a, noise_std):
  var = 1.0 / (1.0 + a**2 / noise_std**2)
  return var * a * x / noise_std**2, np.sqrt(var)


class TestIWAEBound:

  @given(st.data())
  def test_l1_equals_elbo(self, data):
    log_w = jnp.asarray(data.draw(st.lists(finite(-1e3, 1e3), min_size=3, max_size=3)))[None]
    np.testing.assert_allclose(bounds.iwae_bound(log_w, axis=0),
                               bounds.elbo(log_w, jnp.zeros_like(log_w), axis=0), rtol=1e-12)

  @given(x=finite(-3.0, 3.0), a=finite(0.2, 3.0), noise_std=finite(0.3, 2.0))
  def test_exact_posterior_gives_log_px_for_every_sample(self, x, a, noise_std):
    q_mean, q_std = exact_posterior(x, a, noise_std)
    log_joint, log_q, log_px = linear_gaussian(x, a, noise_std, q_mean, q_std,
                                               jax.random.PRNGKey(0), 4, 5)
    np.testing.assert_allclose(bounds.iwae_bound(log_joint - log_q), log_px, rtol=1e-9)
    # log p(x, z) - log q(z) = log p(x) at every draw of the exact posterior; log q != 0
    np.testing.assert_allclose(bounds.elbo(log_joint, log_q), log_px, rtol=1e-9)

  @given(x=finite(-2.0, 2.0), a=finite(0.5, 2.0), noise_std=finite(0.5, 1.5),
         shift=finite(-1.0, 1.0), log_ratio=finite(-0.5, 0.5))
  def test_monotone_in_k_and_below_log_px(self, x, a, noise_std, shift, log_ratio):
    """Theorem 2 / Burda et al.: E L_k <= E L_{k+m} <= log p(x), -> log p(x)."""
    q_mean, q_std = exact_posterior(x, a, noise_std)
    q_mean, q_std = q_mean + shift * q_std, q_std * np.exp(log_ratio)
    key = jax.random.PRNGKey(1)
    means, sems = [], []
    for k in (1, 5, 50, 2000):
      log_joint, log_q, log_px = linear_gaussian(x, a, noise_std, q_mean, q_std, key, 4000 // max(1, k // 50), k)
      draws = np.asarray(bounds.iwae_bound(log_joint - log_q))
      means.append(draws.mean())
      sems.append(draws.std() / np.sqrt(draws.size))
    means, sems = np.array(means), np.array(sems)
    assert np.all(means <= log_px + 4 * sems + 1e-9)
    # Each step in k can only help (the gaps dwarf the Monte-Carlo error here).
    assert np.all(np.diff(means) >= -4 * np.hypot(sems[1:], sems[:-1]) - 1e-9)
    first_gap = log_px - means[0]
    assert log_px - means[-1] <= 0.05 * first_gap + 4 * sems[-1] + 1e-6

  def test_gradients_finite_at_extreme_log_weights(self):
    log_w = jnp.array([[1e4], [-1e4], [0.0]])
    value, grad = jax.value_and_grad(lambda l: bounds.iwae_bound(l).sum())(log_w)
    np.testing.assert_allclose(value, 1e4 - np.log(3.0))
    assert np.all(np.isfinite(grad))


class TestNormalizedWeights:

  @given(st.lists(finite(-1e4, 1e4), min_size=2, max_size=6))
  def test_sum_to_one_at_large_magnitudes(self, values):
    w = bounds.normalized_weights(jnp.asarray(values))
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
    ref = np.exp(np.asarray(values) - max(values))
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-9, atol=1e-300)

  @given(st.lists(finite(-50.0, 50.0), min_size=3, max_size=3))
  def test_effective_sample_size_between_one_and_k(self, values):
    ess = bounds.effective_sample_size(jnp.asarray(values))
    w = np.exp(np.asarray(values) - max(values)); w /= w.sum()
    np.testing.assert_allclose(ess, 1.0 / np.sum(w**2), rtol=1e-9)
    assert 1.0 - 1e-9 <= ess <= 3.0 + 1e-9


class TestNonDefaultAxis:
  """Every bound and weight function along a sample axis other than 0, on non-square
  arrays, against numpy / scipy reductions over that axis."""

  LOG_W = np.random.default_rng(5).normal(size=(4, 7)) * 20.0

  def test_elbo_along_axis_1(self):
    """The mean of log p - log q over axis 1, numpy's."""
    log_joint = np.random.default_rng(6).normal(size=(3, 5)) * 4.0
    log_q = np.random.default_rng(7).normal(size=(3, 5))
    np.testing.assert_allclose(bounds.elbo(log_joint, log_q, axis=1),
                               np.mean(log_joint - log_q, axis=1), rtol=1e-12)

  @pytest.mark.parametrize("axis", [0, 1])
  def test_normalized_weights_along_axis(self, axis):
    """scipy.special.softmax over the same axis: each slice along it sums to one."""
    got = bounds.normalized_weights(jnp.asarray(self.LOG_W), axis=axis)
    np.testing.assert_allclose(got, scipy.special.softmax(self.LOG_W, axis=axis),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(np.sum(got, axis=axis), 1.0, rtol=1e-12)

  @pytest.mark.parametrize("axis", [0, 1])
  def test_effective_sample_size_along_axis(self, axis):
    """Kish's 1 / sum w^2 of numpy-normalized weights, per column ([K, B], axis 0) or per
    row ([B, M], axis 1)."""
    w = np.exp(self.LOG_W - self.LOG_W.max(axis=axis, keepdims=True))
    w /= w.sum(axis=axis, keepdims=True)
    expected = 1.0 / np.sum(w**2, axis=axis)
    got = bounds.effective_sample_size(jnp.asarray(self.LOG_W), axis=axis)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all(got >= 1.0 - 1e-12) and np.all(got <= self.LOG_W.shape[axis] + 1e-9)


class TestImportanceWeightedKL:

  @given(mean=finite(-2.0, 2.0), log_std=finite(-0.7, 0.4))
  def test_k1_is_kl_and_decreases_with_k(self, mean, log_std):
    """q = N(mean, std^2), target p = N(0, 1) normalized: KL^1 = KL(q||p) (4.15)."""
    std = np.exp(log_std)
    analytic = 0.5 * (std**2 + mean**2 - 1.0) - log_std
    results = []
    for k in (1, 10):
      z = mean + std * jax.random.normal(jax.random.PRNGKey(2), (k, 20000))
      draws = np.asarray(bounds.importance_weighted_kl(
          lk.gaussian_log_prob(z, 0.0, 0.0), lk.gaussian_log_prob(z, mean, 2 * log_std)))
      results.append((draws.mean(), draws.std() / np.sqrt(draws.size)))
    (kl1, se1), (kl10, se10) = results
    assert abs(kl1 - analytic) <= 4 * se1 + 1e-9
    assert kl10 <= kl1 + 4 * np.hypot(se1, se10)
    assert kl10 >= -4 * se10


  def test_decreases_strictly_with_k_where_q_is_off(self):
    """q = N(1, e^-0.6) against p = N(0, 1): KL^1 = 0.574, and KL^10 is well below it (a
    plain mean over the k samples, not their log-mean-exp, would leave it at KL^1)."""
    mean, log_std = 1.0, -0.3
    estimates = []
    for k in (1, 10):
      z = mean + np.exp(log_std) * jax.random.normal(jax.random.PRNGKey(3), (k, 20000))
      draws = np.asarray(bounds.importance_weighted_kl(
          lk.gaussian_log_prob(z, 0.0, 0.0), lk.gaussian_log_prob(z, mean, 2 * log_std)))
      estimates.append((draws.mean(), draws.std() / np.sqrt(draws.size)))
    (kl1, se1), (kl10, se10) = estimates
    assert kl10 < kl1 - 8 * np.hypot(se1, se10), (kl1, kl10)
    assert kl10 > 0

  def test_log_normalizer_of_an_unnormalized_target(self):
    """p~ = Z N(0, 1) with log Z = 3 passed as ``log_normalizer``: the estimate is KL(q||p)
    again; without it (or with its sign flipped) it would be off by 3 (or 6)."""
    mean, log_std = 0.5, -0.3
    analytic = 0.5 * (np.exp(2 * log_std) + mean**2 - 1.0) - log_std
    z = mean + np.exp(log_std) * jax.random.normal(jax.random.PRNGKey(4), (1, 20000))
    draws = np.asarray(bounds.importance_weighted_kl(
        lk.gaussian_log_prob(z, 0.0, 0.0) + 3.0, lk.gaussian_log_prob(z, mean, 2 * log_std),
        log_normalizer=3.0))
    assert abs(draws.mean() - analytic) <= 4 * draws.std() / np.sqrt(draws.size) + 1e-9

  def test_samples_along_axis_1(self):
    """Samples on axis 1: per row, minus scipy's log-mean-exp of log p - log q over that
    axis; with one sample per row, the mean over rows is the analytic KL(q||p)."""
    mean, std = 1.0, np.exp(-0.3)
    analytic = 0.5 * (std**2 + mean**2 - 1.0) - np.log(std)
    rng = np.random.default_rng(5)
    for k in (1, 10):
      z = mean + std * rng.normal(size=(4000 // k, k))
      log_p, log_q = scipy.stats.norm.logpdf(z), scipy.stats.norm.logpdf(z, mean, std)
      draws = np.asarray(bounds.importance_weighted_kl(log_p, log_q, axis=1))
      expected = np.log(k) - scipy.special.logsumexp(log_p - log_q, axis=1)
      np.testing.assert_allclose(draws, expected, rtol=1e-12, atol=1e-12)
      if k == 1:
        assert abs(draws.mean() - analytic) <= 4 * draws.std() / np.sqrt(draws.size)


def test_jit_equals_eager():
  log_w = jax.random.normal(jax.random.PRNGKey(0), (5, 3)) * 30
  for fn in (bounds.iwae_bound, bounds.normalized_weights, bounds.effective_sample_size):
    np.testing.assert_allclose(jax.jit(fn)(log_w), fn(log_w), rtol=1e-12)
