"""Property tests of dgm_jax.svm against quadrature, scipy.stats and numpy."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from dgm_jax import svm

QUAD = dict(epsabs=0.0, epsrel=1e-11, limit=200)


def integrate_positive(fn, peak):
  """quad of fn over (0, inf), as the integral of 2 t fn(t^2) over t > 0.

  The substitution lambda = t^2 removes the lambda^{-1/2} singularity of the
  (3.20) integrand; for small |u| = peak its cut-off exp(-u^2 / (2 lambda))
  acts at t ~ |u| and the mode is near t ~ sqrt|u|, so the t-axis is split
  there and at 1.
  """
  edges = sorted({x for x in (peak, np.sqrt(peak), 1.0) if x > 0})
  edges = [0.0] + edges + [np.inf]
  integrand = lambda t: 2.0 * t * fn(t * t)
  return sum(scipy.integrate.quad(integrand, lo, hi, **QUAD)[0]
             for lo, hi in zip(edges[:-1], edges[1:]))


def scipy_invgauss(mean, shape):
  """IG(mean, shape) as scipy's invgauss(mu=mean / shape, scale=shape)."""
  return scipy.stats.invgauss(mean / shape, scale=shape)


class TestPseudoLikelihood:

  @hypothesis.given(st.floats(-3.0, 3.0), st.floats(0.1, 5.0),
                    st.sampled_from([-1, 1]))
  def test_augmentation_integrates_to_hinge(self, score, gamma, label):
    augmented = jax.jit(svm.augmented_log_lik)
    density = lambda lam: float(np.exp(augmented(score, label, lam, gamma)))
    margin = abs(1.0 - label * score)
    integral = integrate_positive(density, margin)
    expected = np.exp(-2.0 * gamma * max(1.0 - label * score, 0.0))
    np.testing.assert_allclose(
        np.exp(svm.hinge_pseudo_log_lik(score, label, gamma)), expected,
        rtol=1e-14)
    np.testing.assert_allclose(integral, expected, rtol=1e-6)

  @hypothesis.given(hnp.arrays(np.float64, (4, 3), elements=st.floats(-3, 3)),
                    hnp.arrays(np.float64, (4, 3), elements=st.floats(0.01, 9)))
  def test_elementwise_and_jit(self, scores, lam):
    labels = np.where(np.arange(12).reshape(4, 3) % 2, 1, -1)
    hinge = svm.hinge_pseudo_log_lik(scores, labels, 0.7)
    aug = svm.augmented_log_lik(scores, labels, lam, 0.7)
    assert hinge.shape == aug.shape == (4, 3)
    np.testing.assert_allclose(
        jax.jit(svm.hinge_pseudo_log_lik)(scores, labels, 0.7), hinge,
        rtol=1e-14)
    np.testing.assert_allclose(
        jax.jit(svm.augmented_log_lik)(scores, labels, lam, 0.7), aug,
        rtol=1e-14)
    expected = scipy.stats.norm(labels * (1 + lam), np.sqrt(lam / 0.7))
    np.testing.assert_allclose(aug, expected.logpdf(scores), rtol=1e-12)


IG_PARAMS = [(1.0, 1.0), (0.5, 3.0), (4.0, 0.5), (2.0, 20.0)]


class TestInverseGaussian:

  @pytest.mark.parametrize("mean,shape", IG_PARAMS)
  def test_mean_and_variance(self, mean, shape):
    num_draws = 200_000
    draws = np.asarray(svm.sample_inverse_gaussian(
        jax.random.key(0), mean, shape, (num_draws,)))
    dist = scipy_invgauss(mean, shape)
    true_mean, true_var, _, excess_kurtosis = dist.stats(moments="mvsk")
    np.testing.assert_allclose(true_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(true_var, mean**3 / shape, rtol=1e-12)
    mean_se = np.sqrt(true_var / num_draws)
    var_se = true_var * np.sqrt((excess_kurtosis + 2.0) / num_draws)
    assert abs(draws.mean() - true_mean) < 3.5 * mean_se
    assert abs(draws.var() - true_var) < 3.5 * var_se

  @pytest.mark.parametrize("mean,shape", IG_PARAMS + [(1e6, 1.0), (1e-3, 2.0)])
  def test_kolmogorov_smirnov(self, mean, shape):
    draws = np.asarray(svm.sample_inverse_gaussian(
        jax.random.key(1), mean, shape, (20_000,)))
    assert np.all(draws > 0)
    result = scipy.stats.kstest(draws, scipy_invgauss(mean, shape).cdf)
    assert result.pvalue > 1e-3, result

  def test_broadcasting_and_jit(self):
    mean = jnp.array([[0.5], [2.0]])
    shape = jnp.array([1.0, 3.0, 0.2])
    key = jax.random.key(2)
    draws = svm.sample_inverse_gaussian(key, mean, shape, (5,))
    assert draws.shape == (5, 2, 3)
    jitted = jax.jit(svm.sample_inverse_gaussian, static_argnums=3)
    np.testing.assert_allclose(jitted(key, mean, shape, (5,)), draws,
                               rtol=1e-14)


def lambda_moments_by_quadrature(margin, gamma):
  """E[lambda], E[1 / lambda], E[lambda^2] under the integrand of (3.20).

  `margin` is the signed u = 1 - y f; the density in lambda is proportional
  to lambda^{-1/2} exp(-gamma (u + lambda)^2 / (2 lambda)).
  """
  density = lambda lam: np.exp(-0.5 * np.log(lam) - 0.5 * gamma * (
      margin + lam)**2 / lam + 2.0 * gamma * max(margin, 0.0))
  peak = abs(margin)
  norm = integrate_positive(density, peak)
  first = integrate_positive(lambda lam: lam * density(lam), peak)
  inverse = integrate_positive(lambda lam: density(lam) / lam, peak)
  second = integrate_positive(lambda lam: lam**2 * density(lam), peak)
  return first / norm, inverse / norm, second / norm


class TestSampleLambda:

  @pytest.mark.parametrize("score,label,gamma", [
      (0.3, 1, 1.0), (2.5, 1, 0.3), (0.8, -1, 2.5), (-1.5, -1, 1.0)])
  def test_moments_match_the_conditional(self, score, label, gamma):
    num_draws = 200_000
    lam = np.asarray(svm.sample_lambda(
        jax.random.key(3), jnp.full((num_draws,), score), label, gamma))
    margin = 1.0 - label * score
    mean, inverse_mean, second = lambda_moments_by_quadrature(margin, gamma)
    mean_se = np.sqrt((second - mean**2) / num_draws)
    assert abs(lam.mean() - mean) < 3.5 * mean_se
    inverse = 1.0 / lam
    assert abs(inverse.mean() - inverse_mean) < 3.5 * inverse.std() / np.sqrt(
        num_draws)

  def test_zero_margin_is_finite_and_jit(self):
    scores = jnp.array([1.0, -1.0, 0.2])
    labels = jnp.array([1, -1, 1])
    key = jax.random.key(4)
    lam = svm.sample_lambda(key, scores, labels, 2.0)
    assert np.all(np.isfinite(lam)) and np.all(np.asarray(lam) > 0)
    np.testing.assert_allclose(jax.jit(svm.sample_lambda)(
        key, scores, labels, 2.0), lam, rtol=1e-14)


def beta_normal_equations(features, labels, lam, omega, gamma):
  """Weighted ridge: targets y (1 + lambda), noise variances lambda / gamma."""
  targets = labels * (1.0 + lam)
  noise_precision = np.diag(gamma / lam)
  precision = features.T @ noise_precision @ features + np.diag(1.0 / omega)
  cov = np.linalg.inv(precision)
  return cov @ features.T @ noise_precision @ targets, cov


@jax.jit
def log_joint_grad_and_hessian(beta, features, labels, lam, omega, gamma):
  """Autodiff of sum_n log (3.20) integrand + log N(beta | 0, diag(omega))."""

  def log_joint(beta):
    return (svm.augmented_log_lik(features @ beta, labels, lam, gamma).sum()
            - 0.5 * jnp.sum(beta**2 / omega))

  return jax.grad(log_joint)(beta), jax.hessian(log_joint)(beta)


@st.composite
def regression_cases(draw):
  num_points, dim = draw(st.sampled_from([(6, 3), (10, 2)]))
  features = draw(hnp.arrays(np.float64, (num_points, dim),
                             elements=st.floats(-3, 3)))
  labels = draw(hnp.arrays(np.int64, (num_points,),
                           elements=st.sampled_from([-1, 1])))
  lam = draw(hnp.arrays(np.float64, (num_points,),
                        elements=st.floats(0.05, 10)))
  omega = draw(hnp.arrays(np.float64, (dim,), elements=st.floats(0.1, 10)))
  gamma = draw(st.floats(0.1, 5.0))
  return features, labels, lam, omega, gamma


class TestBetaConditional:

  @hypothesis.given(regression_cases())
  def test_matches_normal_equations(self, case):
    mean, cov = svm.beta_conditional(*case)
    expected_mean, expected_cov = beta_normal_equations(*case)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cov, expected_cov, rtol=1e-8, atol=1e-10)
    jit_mean, jit_cov = jax.jit(svm.beta_conditional)(*case)
    np.testing.assert_allclose(jit_mean, mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jit_cov, cov, rtol=1e-12, atol=1e-14)

  @hypothesis.given(regression_cases())
  def test_is_the_gaussian_of_the_augmented_log_joint(self, case):
    mean, cov = svm.beta_conditional(*case)
    grad, hessian = log_joint_grad_and_hessian(mean, *case)
    np.testing.assert_allclose(grad, 0.0, atol=1e-8)
    np.testing.assert_allclose(-hessian, np.linalg.inv(cov), rtol=1e-8,
                               atol=1e-8)

  def test_sample_beta_moments(self):
    rng = np.random.default_rng(5)
    case = (rng.normal(size=(8, 3)), rng.choice([-1, 1], 8),
            rng.uniform(0.2, 2.0, 8), np.array([0.5, 2.0, 1.0]), 1.3)
    mean, cov = svm.beta_conditional(*case)
    num_draws = 50_000
    keys = jax.random.split(jax.random.key(6), num_draws)
    draws = np.asarray(jax.vmap(lambda k: svm.sample_beta(k, *case))(keys))
    se = np.sqrt(np.diag(cov) / num_draws)
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * se)
    # Each sample covariance entry's standard error, (S_ii S_jj + S_ij^2) / n for Gaussian
    # draws: the old atol of 0.01 was 10-50% of these entries.
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / num_draws)
    assert np.all(np.abs(np.cov(draws.T) - cov) < 5 * cov_se), (np.cov(draws.T), cov, cov_se)
    np.testing.assert_allclose(jax.jit(svm.sample_beta)(keys[0], *case),
                               svm.sample_beta(keys[0], *case), rtol=1e-12)


class TestShrinkage:

  @pytest.mark.parametrize("beta,kappa", [(0.3, 1.0), (1.5, 0.2), (0.05, 4.0)])
  def test_omega_moments_match_the_conditional(self, beta, kappa):
    density = lambda w: np.exp(-0.5 * np.log(w) - beta**2 / (2 * w) - kappa * w)
    peak = abs(beta) / np.sqrt(2 * kappa)
    norm = integrate_positive(density, peak)
    mean = integrate_positive(lambda w: w * density(w), peak) / norm
    second = integrate_positive(lambda w: w**2 * density(w), peak) / norm
    num_draws = 200_000
    omega = np.asarray(svm.sample_omega(
        jax.random.key(7), jnp.full((num_draws,), beta), kappa))
    assert abs(omega.mean() - mean) < 3.5 * np.sqrt(
        (second - mean**2) / num_draws)

  def test_kappa_moments_match_the_conditional(self):
    omega = np.array([0.3, 1.2, 0.05, 2.0])
    concentration, rate = 1.5, 0.5
    log_density = lambda k: ((concentration - 1 + omega.size) * np.log(k)
                             - k * (rate + omega.sum()))
    density = lambda k: np.exp(log_density(k) - log_density(1.0))
    norm = integrate_positive(density, 1.0)
    mean = integrate_positive(lambda k: k * density(k), 1.0) / norm
    second = integrate_positive(lambda k: k**2 * density(k), 1.0) / norm
    num_draws = 100_000
    keys = jax.random.split(jax.random.key(8), num_draws)
    kappa = np.asarray(jax.vmap(
        lambda k: svm.sample_kappa(k, omega, concentration, rate))(keys))
    assert abs(kappa.mean() - mean) < 3.5 * np.sqrt(
        (second - mean**2) / num_draws)


def separable_data(num_points=60, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.choice([-1, 1], num_points)
  points = labels[:, None] * np.array([1.5, 1.0]) + 0.4 * rng.normal(
      size=(num_points, 2))
  return np.concatenate([points, np.ones((num_points, 1))], 1), labels


class TestGibbs:

  def test_sweeps_classify_separable_data(self):
    features, labels = separable_data()
    gamma, concentration, rate = 1.0, 1.0, 1.0

    def sweep(carry, key):
      beta, omega, kappa = carry
      lam_key, beta_key, omega_key, kappa_key = jax.random.split(key, 4)
      lam = svm.sample_lambda(lam_key, features @ beta, labels, gamma)
      beta = svm.sample_beta(beta_key, features, labels, lam, omega, gamma)
      omega = svm.sample_omega(omega_key, beta, kappa)
      kappa = svm.sample_kappa(kappa_key, omega, concentration, rate)
      return (beta, omega, kappa), beta

    init = (jnp.zeros(3), jnp.ones(3), jnp.asarray(1.0))
    _, betas = jax.lax.scan(sweep, init,
                            jax.random.split(jax.random.key(9), 30))
    accuracy = np.mean(np.sign(features @ np.asarray(betas[-1])) == labels)
    assert accuracy >= 0.95
    # The posterior mean over the second half agrees as well.
    accuracy = np.mean(
        np.sign(features @ np.asarray(betas[15:]).mean(0)) == labels)
    assert accuracy >= 0.95


class TestMulticlass:

  @hypothesis.given(hnp.arrays(np.float64, (7, 3), elements=st.floats(-5, 5)),
                    hnp.arrays(np.float64, (4, 3), elements=st.floats(-5, 5)))
  def test_decision_is_argmax(self, features, betas):
    expected = np.argmax(features @ betas.T, axis=1)
    np.testing.assert_array_equal(svm.multiclass_decision(features, betas),
                                  expected)
    np.testing.assert_array_equal(
        jax.jit(svm.multiclass_decision)(features, betas), expected)

  @hypothesis.given(hnp.arrays(np.int64, (9,), elements=st.integers(0, 3)))
  def test_one_vs_all_labels(self, labels):
    expected = np.array([[1 if label == c else -1 for c in range(4)]
                         for label in labels])
    np.testing.assert_array_equal(svm.one_vs_all_labels(labels, 4), expected)
    np.testing.assert_array_equal(
        jax.jit(svm.one_vs_all_labels, static_argnums=1)(labels, 4), expected)
