"""bits/dim and the 8-bit likelihoods of section 5.3.1 against independent numpy / scipy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dgm_jax import likelihoods
from dgm_jax.data import transforms
from dgm_jax.eval import nll
from dgm_jax.models import vae


def test_bits_per_dim_is_nats_over_d_ln2():
  nats = np.array([0.0, 1.0, 2000.0])
  np.testing.assert_allclose(nll.bits_per_dim(nats, 784), nats / 784 / np.log(2))
  # A uniform distribution over the 256 levels of every pixel is exactly 8 bits/dim.
  assert nll.bits_per_dim(784 * math.log(256), 784) == pytest.approx(8.0)


def _numpy_discretized_logistic(k, mean, scale):
  """P(level k) with bins [k/256, (k+1)/256) and open edge bins, from scipy's logistic cdf."""
  upper = np.where(k == 255, np.inf, (k + 1) / 256)
  lower = np.where(k == 0, -np.inf, k / 256)
  return stats.logistic.cdf(upper, mean, scale) - stats.logistic.cdf(lower, mean, scale)


@pytest.mark.parametrize("mean,scale", [(0.5, 0.1), (0.02, 0.01), (0.9, 0.3), (0.3, 0.002)])
def test_discretized_logistic_matches_scipy_and_sums_to_one(mean, scale):
  k = np.arange(256)
  got = np.exp(np.asarray(likelihoods.discretized_logistic_log_prob(
      jnp.asarray(k / 255.0), mean, math.log(scale))))
  expected = _numpy_discretized_logistic(k, mean, scale)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
  assert got.sum() == pytest.approx(1.0, abs=1e-9)


def test_logistic_density_matches_scipy():
  x = np.linspace(-0.5, 1.5, 41)
  got = likelihoods.logistic_log_prob(jnp.asarray(x), 0.3, math.log(0.07))
  np.testing.assert_allclose(got, stats.logistic.logpdf(x, 0.3, 0.07), rtol=1e-9, atol=1e-9)


def test_dequantized_density_bound_is_below_the_discrete_log_prob():
  """E_u[log p((k + u) / 256)] - log 256 <= log P(bin k) (Jensen), per pixel and summed."""
  key = jax.random.PRNGKey(0)
  levels = jnp.asarray(np.array([0, 1, 60, 128, 254, 255]) / 255.0)
  outputs = jnp.asarray([[-3.0, -1.0, 0.2, 1.0, 3.0, 5.0,      # raw means
                          -2.0, -3.0, -4.0, -2.5, -5.0, -1.0]])  # raw log-scales
  x = jnp.broadcast_to(levels, (4000, 6))
  dequantized = transforms.uniform_dequantize(key, x, 256)
  mean, log_scale = vae.logistic_params(outputs)
  continuous = (likelihoods.logistic_log_prob(dequantized, mean, log_scale) - math.log(256)).mean(0)
  discrete = likelihoods.discretized_logistic_log_prob(levels, mean, log_scale)[0]
  assert np.all(np.asarray(continuous) <= np.asarray(discrete) + 1e-9)
  np.testing.assert_allclose(
      vae.pixel_log_prob(dequantized, outputs, "discretized_logistic", continuous=True).mean(),
      continuous.sum(), rtol=1e-9)


def _linear_gaussian_log_joint(x, weights, bias, noise_std):
  """log N(z; 0, I) + log N(x; W z + b, s^2 I) for z [..., D]."""
  def log_joint(z):
    mean = z @ weights.T + bias
    return (likelihoods.gaussian_log_prob(z, 0.0, 0.0).sum(-1)
            + likelihoods.gaussian_log_prob(x, mean, 2 * jnp.log(noise_std)).sum(-1))
  return log_joint


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laplace_is_exact_on_a_linear_gaussian_model(seed):
  """Gaussian posterior: the proposal is the posterior, every weight is p(x) (scipy's marginal)."""
  rng = np.random.default_rng(seed)
  weights, bias = rng.normal(size=(5, 3)) * 2.0, rng.normal(size=5)
  noise_std, x = 0.3, rng.normal(size=5) * 3.0
  expected = stats.multivariate_normal.logpdf(
      x, bias, weights @ weights.T + noise_std**2 * np.eye(5))
  log_joint = _linear_gaussian_log_joint(jnp.asarray(x), jnp.asarray(weights), jnp.asarray(bias),
                                         noise_std)
  z_far = jnp.full((3,), 25.0)  # Newton from far away: a quadratic is solved in one step
  got = nll.laplace_log_likelihood(log_joint, z_far, jax.random.PRNGKey(seed), 8, 4)
  assert float(got) == pytest.approx(expected, abs=1e-6)
  mode, precisions, axes = nll.laplace_proposal(log_joint, z_far)
  posterior_precision = np.eye(3) + weights.T @ weights / noise_std**2
  np.testing.assert_allclose(axes @ np.diag(precisions) @ axes.T, posterior_precision, rtol=1e-8)
  np.testing.assert_allclose(
      mode, np.linalg.solve(posterior_precision, weights.T @ (x - bias) / noise_std**2),
      rtol=1e-8, atol=1e-10)


def test_batched_laplace_is_exact_for_each_example_of_a_batch():
  """Each example gets its own mode search and proposal (the models' evaluation path): three
  different x, each estimate equal to its own scipy marginal. Using the first example's for
  all passed every test before."""
  rng = np.random.default_rng(3)
  weights, bias, noise_std = rng.normal(size=(5, 3)) * 2.0, rng.normal(size=5), 0.3
  x = rng.normal(size=(3, 5)) * 3.0
  covariance = weights @ weights.T + noise_std**2 * np.eye(5)
  expected = [stats.multivariate_normal.logpdf(x_n, bias, covariance) for x_n in x]

  def log_joint(x_n, z):
    return _linear_gaussian_log_joint(x_n, jnp.asarray(weights), jnp.asarray(bias), noise_std)(z)

  got = nll.batched_laplace_log_likelihood(log_joint, jnp.asarray(x), jnp.full((3, 3), 25.0),
                                           jax.random.PRNGKey(0), 8, 4)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  assert np.ptp(expected) > 1.0


def test_laplace_matches_quadrature_on_a_bernoulli_decoder():
  """A skewed one-dimensional posterior: the estimate against the integral on a grid."""
  x = jnp.asarray([1.0, 1.0, 0.0, 1.0])
  slopes, offsets = jnp.asarray([3.0, 1.5, -2.0, 0.7]), jnp.asarray([0.5, -1.0, 0.3, 2.0])

  def log_joint(z):
    logits = z[..., :1] * slopes + offsets
    return (likelihoods.bernoulli_log_prob(x, logits).sum(-1)
            + likelihoods.gaussian_log_prob(z[..., 0], 0.0, 0.0))

  grid = np.linspace(-12.0, 12.0, 200_001)
  values = np.asarray(log_joint(jnp.asarray(grid)[:, None]))
  exact = np.log(np.trapezoid(np.exp(values - values.max()), grid)) + values.max()
  got = nll.laplace_log_likelihood(log_joint, jnp.zeros(1), jax.random.PRNGKey(0), 20_000, 2_000)
  assert float(got) == pytest.approx(exact, abs=3e-3)  # 6e-4 off with this key


def test_laplace_newton_steps_never_go_downhill():
  """A flat, non-concave log joint: floored precisions and the accept test keep it finite."""
  def log_joint(z):  # [n, 2] -> [n]
    assert z.ndim == 2
    return jnp.sum(jnp.cos(z), axis=-1)  # saddle-rich, bounded
  z_init = jnp.asarray([0.1, 3.0])  # near a maximum in dim 0, a minimum in dim 1
  mode, precisions, _ = nll.laplace_proposal(log_joint, z_init)
  assert float(log_joint(mode[None])[0]) >= float(log_joint(z_init[None])[0])
  assert np.all(np.asarray(precisions) >= 1e-2) and np.all(np.isfinite(np.asarray(mode)))


def test_laplace_rejects_a_newton_step_that_overshoots_downhill():
  """log p = -log cosh(z) from z0 = 2: the precision sech^2(2) = 0.07 (above the 1e-2 floor)
  makes the full Newton step tanh(2) / sech^2(2) = 13.6 long, to z = -11.6 where numpy's
  -log cosh is 10 nats lower. The full step alone is rejected at every iteration (the mode
  stays at 2, its precision sech^2(2)); with a tenth of it on offer too, the iterates climb
  to the maximum at 0, where the precision is sech^2(0) = 1."""
  def log_joint(z):  # [n, 1] -> [n]
    return -jnp.logaddexp(z[:, 0], -z[:, 0]) + math.log(2.0)

  newton = 2.0 - np.tanh(2.0) / np.cosh(2.0) ** -2
  assert -np.log(np.cosh(newton)) < -np.log(np.cosh(2.0)) - 9.0
  mode, precisions, _ = nll.laplace_proposal(log_joint, jnp.asarray([2.0]))
  np.testing.assert_array_equal(mode, [2.0])
  np.testing.assert_allclose(precisions, [np.cosh(2.0) ** -2], rtol=1e-12)

  mode, precisions, _ = nll.laplace_proposal(log_joint, jnp.asarray([2.0]), 6,
                                             step_scales=(1.0, 0.1))
  assert abs(float(mode[0])) < 1e-8 and float(precisions[0]) == pytest.approx(1.0, rel=1e-12)


def test_standard_error_is_scipys_sem_and_zero_for_one_image():
  """The standard error of a mean NLL is scipy's ``sem``; one image has none to estimate (0)."""
  values = np.random.default_rng(1).normal(95.0, 25.0, size=37)
  assert nll.standard_error(values) == pytest.approx(stats.sem(values), rel=1e-12)
  assert nll.standard_error([93.5]) == 0.0


def test_paired_difference_matches_scipys_paired_t_test():
  """The paired standard error is the one of scipy's ``ttest_rel`` (t = mean / se)."""
  rng = np.random.default_rng(0)
  difficulty = rng.normal(95.0, 25.0, size=500)  # shared by both models
  reference = difficulty + rng.normal(0.0, 1.0, size=500)
  better = difficulty - 0.3 + rng.normal(0.0, 1.0, size=500)
  got = nll.paired_difference(better, reference)
  assert got["num_examples"] == 500
  assert got["nll_difference_nats"] == pytest.approx(np.mean(better) - np.mean(reference))
  t = stats.ttest_rel(better, reference).statistic
  assert got["nll_difference_nats"] / got["standard_error_nats"] == pytest.approx(t, rel=1e-9)
  # Pairing removes the shared difficulty: the unpaired standard error is ~18x larger here.
  unpaired = math.sqrt(np.var(better, ddof=1) / 500 + np.var(reference, ddof=1) / 500)
  assert unpaired > 10 * got["standard_error_nats"]
  same = nll.paired_difference(reference, reference)
  assert same["nll_difference_nats"] == 0.0 and same["standard_error_nats"] == 0.0


@pytest.mark.parametrize("a,b", [(np.zeros(3), np.zeros(4)), (np.zeros(1), np.zeros(1)),
                                 (np.zeros((2, 2)), np.zeros((2, 2)))])
def test_paired_difference_rejects_unpaired_shapes(a, b):
  with pytest.raises(ValueError, match="same length"):
    nll.paired_difference(a, b)


@pytest.mark.parametrize("num_samples,chunk", [(60, 20), (60, 60), (7, 1)])
def test_importance_log_likelihood_is_the_log_mean_exp_of_every_chunks_own_draws(
    num_samples, chunk):
  """Against numpy on the draws written out: chunk i draws with the i-th split key, so
  a key reused across chunks (repeated draws) cannot pass."""
  key = jax.random.PRNGKey(3)
  def log_weight_fn(k, n):
    return 4.0 * jax.random.normal(k, (n, 3))  # [n, B = 3]
  got = nll.importance_log_likelihood(log_weight_fn, key, num_samples, chunk)
  draws = np.concatenate([np.asarray(log_weight_fn(k, chunk), np.float64)
                          for k in jax.random.split(key, num_samples // chunk)])
  assert draws.shape == (num_samples, 3) and len(np.unique(draws[:, 0])) == num_samples
  expected = np.log(np.mean(np.exp(draws), axis=0))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("num_samples,max_chunk,size", [(5000, 500, 500), (5000, 64, 50),
                                                        (1000, 2000, 1000), (101, 20, 1),
                                                        (12, 5, 4)])
def test_chunk_size_is_the_largest_divisor_at_most_max_chunk(num_samples, max_chunk, size,
                                                            caplog):
  with caplog.at_level("WARNING"):
    assert nll.chunk_size_for(num_samples, max_chunk) == size
  warned = [r.getMessage() for r in caplog.records if "no divisor near max_chunk" in r.getMessage()]
  if num_samples == 101:  # 101 chunks of 1; K = 100 would take 5
    assert warned == ["K=101 importance samples draw in 101 chunks of 1 (eval.max_chunk=20): K "
                      "has no divisor near max_chunk; K=100 would take 5 chunks"]
  else:
    assert not warned
