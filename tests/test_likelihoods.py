"""Likelihoods against scipy.stats and numerical integration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from dgm_jax import likelihoods as lk

SHAPES = st.sampled_from([(3,), (2, 5)])
finite = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def arrays(shape, lo, hi):
  return hnp.arrays(np.float64, shape, elements=finite(lo, hi))


@st.composite
def triples(draw, lo=-5.0, hi=5.0, scale_lo=-3.0, scale_hi=2.0):
  shape = draw(SHAPES)
  return (draw(arrays(shape, lo, hi)), draw(arrays(shape, lo, hi)),
          draw(arrays(shape, scale_lo, scale_hi)))


class TestBernoulli:

  @given(st.data())
  def test_matches_scipy(self, data):
    shape = data.draw(SHAPES)
    logits = data.draw(arrays(shape, -30.0, 30.0))
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0])))
    # scipy's logpmf loses digits in 1 - expit(20); log_expit is exact in both tails.
    expected = np.where(x == 1.0, scipy.special.log_expit(logits), scipy.special.log_expit(-logits))
    np.testing.assert_allclose(lk.bernoulli_log_prob(x, logits), expected, rtol=1e-9, atol=1e-12)

  def test_finite_at_huge_logits(self):
    logits = jnp.array([-1e4, 1e4, -1e4, 1e4])
    x = jnp.array([0.0, 1.0, 1.0, 0.0])
    out = lk.bernoulli_log_prob(x, logits)
    np.testing.assert_allclose(out, [0.0, 0.0, -1e4, -1e4])


  @given(st.data())
  def test_gradient_is_x_minus_sigmoid_to_every_order_used(self, data):
    # The custom softplus derivative against scipy's expit, and its own derivative
    # (the Gauss-Newton curvature p (1 - p)) too.
    shape = data.draw(SHAPES)
    logits = data.draw(arrays(shape, -40.0, 40.0))
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0])))
    grad = jax.grad(lambda l: jnp.sum(lk.bernoulli_log_prob(x, l)))(logits)
    np.testing.assert_allclose(grad, x - scipy.special.expit(logits), rtol=1e-12, atol=1e-300)
    second = jax.grad(lambda l: jnp.sum(jax.grad(lambda m: jnp.sum(lk.softplus(m)))(l)))(logits)
    expected = scipy.special.expit(logits) * scipy.special.expit(-logits)
    np.testing.assert_allclose(second, expected, rtol=1e-9, atol=1e-300)

  def test_gradient_finite_at_huge_logits(self):
    logits = jnp.array([-1e4, 1e4, -1e4, 1e4])
    x = jnp.array([0.0, 1.0, 1.0, 0.0])
    grad = jax.grad(lambda l: jnp.sum(lk.bernoulli_log_prob(x, l)))(logits)
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, -1.0])
    # The curvature in the tails: p (1 - p) with 1 - p rounding to 0 would give 0 at +40.
    tails = np.array([-40.0, 40.0])
    curvature = jax.vmap(jax.grad(jax.grad(lk.softplus)))(tails)
    np.testing.assert_allclose(curvature, scipy.special.expit(tails) * scipy.special.expit(-tails),
                               rtol=1e-12)
    assert np.all(curvature > 0)


class TestGaussian:

  @given(triples())
  def test_matches_scipy(self, args):
    x, mean, log_var = args
    expected = scipy.stats.norm.logpdf(x, mean, np.exp(0.5 * log_var))
    np.testing.assert_allclose(lk.gaussian_log_prob(x, mean, log_var), expected, rtol=1e-10)


class TestLaplace:

  @given(triples())
  def test_matches_scipy(self, args):
    x, loc, log_scale = args
    expected = scipy.stats.laplace.logpdf(x, loc, np.exp(log_scale))
    np.testing.assert_allclose(lk.laplace_log_prob(x, loc, log_scale), expected, rtol=1e-10)


@pytest.mark.parametrize("fn,log_norm", [
    (lk.gaussian_log_prob, lambda s: -0.5 * (np.log(2 * np.pi) + s)),
    (lk.laplace_log_prob, lambda s: -np.log(2.0) - s)])
def test_a_collapsed_scale_at_its_own_mean_is_finite_in_float32(fn, log_norm):
  """A sample ``mean + exp(log_scale / 2) eps`` rounds to the mean once the scale is tiny;
  with ``exp(-log_scale)`` overflowing (log_scale = -100 in float32) the residual's 0 times inf
  was NaN. The density at the mean is its normalizer."""
  mean = jnp.float32(0.5)
  log_scale = jnp.float32(-100.0)
  x = mean + jnp.exp(0.5 * log_scale) * jnp.float32(1.3)
  assert x == mean
  np.testing.assert_allclose(fn(x, mean, log_scale), log_norm(-100.0), rtol=1e-6)
  if fn is lk.gaussian_log_prob:  # (x - m) / var: 0 (the Laplace has its kink there)
    assert jax.grad(lambda m: fn(x, m, log_scale))(mean) == 0.0


class TestPoisson:

  @given(st.data())
  def test_matches_scipy(self, data):
    shape = data.draw(SHAPES)
    counts = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 200)))
    log_rate = data.draw(arrays(shape, -4.0, 5.0))
    expected = scipy.stats.poisson.logpmf(counts, np.exp(log_rate))
    np.testing.assert_allclose(lk.poisson_log_prob(counts.astype(np.float64), log_rate),
                               expected, rtol=1e-9, atol=1e-9)

  @given(finite(-3.0, 4.0))
  def test_sums_to_one(self, log_rate):
    counts = jnp.arange(1000.0)
    total = jax.scipy.special.logsumexp(lk.poisson_log_prob(counts, log_rate))
    np.testing.assert_allclose(total, 0.0, atol=1e-10)


class TestCategorical:

  @given(st.data())
  def test_matches_numpy(self, data):
    logits = data.draw(arrays((4, 6), -50.0, 50.0))
    labels = data.draw(hnp.arrays(np.int32, (4,), elements=st.integers(0, 5)))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    np.testing.assert_allclose(lk.categorical_log_prob(labels, logits),
                               log_probs[np.arange(4), labels], rtol=1e-10, atol=1e-10)


class TestKL:

  @given(finite(-3.0, 3.0), finite(-3.0, 2.0))
  def test_matches_quadrature(self, mean, log_var):
    std = np.exp(0.5 * log_var)
    q = scipy.stats.norm(mean, std)
    integrand = lambda z: q.pdf(z) * (q.logpdf(z) - scipy.stats.norm.logpdf(z))
    expected, _ = scipy.integrate.quad(integrand, mean - 12 * std, mean + 12 * std,
                                       epsabs=1e-12, limit=200)
    np.testing.assert_allclose(lk.kl_diag_gaussian_std_normal(mean, log_var), expected,
                               rtol=1e-6, atol=1e-9)


DISCRETIZED = {
    "logistic": (lk.discretized_logistic_log_prob, scipy.stats.logistic),
    "gaussian": (lk.discretized_gaussian_log_prob, scipy.stats.norm),
}


@pytest.mark.parametrize("name", sorted(DISCRETIZED))
class TestDiscretized:

  # log_scale above 1.44 puts bins below 1e-3 standard deviations (the Gaussian's
  # midpoint rule)
  @given(mean=finite(-0.5, 1.5), log_scale=finite(-8.0, 4.0))
  def test_sums_to_one_over_256_bins(self, name, mean, log_scale):
    fn, _ = DISCRETIZED[name]
    pixels = jnp.arange(256.0) / 255.0
    total = jax.scipy.special.logsumexp(fn(pixels, mean, log_scale))
    np.testing.assert_allclose(total, 0.0, atol=1e-9)

  @given(mean=finite(-0.5, 1.5), log_scale=finite(-5.0, 4.0))
  def test_bins_match_scipy_cdf(self, name, mean, log_scale):
    fn, dist = DISCRETIZED[name]
    k = np.arange(256.0)
    scale = np.exp(log_scale)
    upper = np.where(k == 255, np.inf, (k + 1) / 256)
    lower = np.where(k == 0, -np.inf, k / 256)
    # The survival function keeps precision in the upper tail.
    probs = dist.sf(lower, mean, scale) - dist.sf(upper, mean, scale)
    probs = np.where(mean > 0.5, probs, dist.cdf(upper, mean, scale) - dist.cdf(lower, mean, scale))
    got = np.exp(np.asarray(fn(k / 255.0, mean, log_scale)))
    np.testing.assert_allclose(got, probs, rtol=1e-6, atol=1e-14)

  @pytest.mark.parametrize("pixel,mean,log_scale", [(128, 0.0, -5.0), (20, 1.0, -4.0),
                                                    (255, 0.0, -5.0), (0, 1.0, -5.0)])
  def test_far_tail_bins_in_log_space(self, name, pixel, mean, log_scale):
    """Bins many scales from the mean (log p from -100 to -2800), against scipy's log tails:
    probabilities below 1e-14 pass any ``atol=1e-14`` comparison, so these are compared as
    logs (a bin computed on the wrong side of the mean gives about -708 here)."""
    fn, dist = DISCRETIZED[name]
    scale = np.exp(log_scale)
    lower = -np.inf if pixel == 0 else pixel / 256
    upper = np.inf if pixel == 255 else (pixel + 1) / 256
    if lower >= mean:  # upper tail: log(sf(lower) - sf(upper))
      big, small = dist.logsf(lower, mean, scale), dist.logsf(upper, mean, scale)
    else:
      big, small = dist.logcdf(upper, mean, scale), dist.logcdf(lower, mean, scale)
    expected = big + np.log1p(-np.exp(small - big))
    assert expected < -50
    np.testing.assert_allclose(fn(jnp.float64(pixel / 255), mean, log_scale), expected,
                               rtol=1e-6)

  def test_sharp_distribution_is_finite_with_finite_grads(self, name):
    fn, _ = DISCRETIZED[name]
    pixels = jnp.array([0.0, 10 / 255, 128 / 255, 1.0])
    value, grads = jax.value_and_grad(lambda m, s: fn(pixels, m, s).sum(), argnums=(0, 1))(
        jnp.full(4, 0.999), jnp.full(4, -12.0))
    assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
    # The bin that holds the mean carries all the mass.
    np.testing.assert_allclose(fn(jnp.array(1.0), 0.999, -12.0), 0.0, atol=1e-12)


@pytest.mark.parametrize("name", ["logistic", "gaussian"])
def test_wide_distribution_in_float32_has_finite_grads(name):
  """At log_scale 12 a bin is 2.4e-8 scales wide, below float32's epsilon: the gradient
  stays finite (the unused branch of log1mexp made the logistic's NaN; the Gaussian's
  difference of log Phi cancelled to 0, its gradient with it), and the value is the log
  of bin width times the density at the mean."""
  fn, dist = DISCRETIZED[name]
  pixels = jnp.array([10 / 255, 0.5, 200 / 255], jnp.float32)
  mean, log_scale = jnp.full(3, 0.5, jnp.float32), jnp.full(3, 12.0, jnp.float32)
  value, grads = jax.value_and_grad(lambda m, s: fn(pixels, m, s).sum(), argnums=(0, 1))(
      mean, log_scale)
  assert value.dtype == jnp.float32
  assert all(np.all(np.isfinite(g)) for g in grads), grads
  # d/d log_scale of log(width * pdf(~mean) / scale) is -1 per pixel
  np.testing.assert_allclose(grads[1], -1.0, rtol=1e-3)
  expected = np.log(dist.pdf(0.5, 0.5, np.exp(12.0)) / 256)
  np.testing.assert_allclose(fn(pixels[1], jnp.float32(0.5), jnp.float32(12.0)), expected,
                             rtol=1e-5)


@pytest.mark.parametrize("mean", [0.5, -3.0])
def test_gaussian_narrow_bins_match_the_normal_cdf_to_1e11(mean):
  """Bins 1/1024 standard deviations wide (log_scale = log 4; |midpoint| <= 1, so every
  inner bin takes the midpoint rule) against log(Phi(hi) - Phi(lo)) from scipy's ndtr in
  float64, on the side of the mean that keeps its digits. The rule's second-order term
  w^2 (m^2 - 1) / 24 moves log p by about 1e-7 here; the comparison is to 1e-11."""
  scale = 4.0
  k = np.arange(1.0, 255.0)
  lo, hi = (k / 256 - mean) / scale, ((k + 1) / 256 - mean) / scale
  assert np.all((hi - lo) * np.maximum(1.0, np.abs(0.5 * (hi + lo))) < 1e-3)
  expected = np.where(hi <= 0, np.log(scipy.special.ndtr(hi) - scipy.special.ndtr(lo)),
                      np.log(scipy.special.ndtr(-lo) - scipy.special.ndtr(-hi)))
  got = jax.jit(lk.discretized_gaussian_log_prob)(jnp.asarray(k / 255), mean, np.log(scale))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11)


def test_jit_equals_eager():
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (7,))
  m = jax.random.normal(jax.random.PRNGKey(1), (7,))
  s = jax.random.normal(jax.random.PRNGKey(2), (7,))
  for fn in (lk.bernoulli_log_prob, lambda a, b: lk.gaussian_log_prob(a, b, s),
             lambda a, b: lk.discretized_logistic_log_prob(a, b, s),
             lambda a, b: lk.discretized_gaussian_log_prob(a, b, s),
             lambda a, b: lk.laplace_log_prob(a, b, s), lk.poisson_log_prob,
             lk.kl_diag_gaussian_std_normal):
    np.testing.assert_allclose(jax.jit(fn)(x, m), fn(x, m), rtol=1e-12)
