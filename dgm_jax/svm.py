"""Bayesian support vector machine of section 3.3.1 (equations (3.17)-(3.22)).

The hinge loss of (3.17) becomes the pseudo-likelihood
``exp(-2 gamma max(1 - y f, 0))`` (3.19), which Polson and Scott write as a
location-scale mixture of Gaussians in ``y f`` over a latent ``lambda`` (3.20).
Given lambda, the linear score ``f = beta^T s`` has a Gaussian likelihood, so
with the shrinkage prior ``beta_i ~ N(0, omega_i)``, ``omega_i ~ Exp(kappa)``,
``kappa ~ Gamma(a, b)`` (3.21) every conditional is standard: lambda and omega
through inverse-Gaussian draws of their reciprocals, beta Gaussian, kappa gamma.
``C`` such one-versus-all machines classify by ``argmax_l beta_l^T s`` (3.22).
All densities are element-wise (unreduced); nothing loops over examples.
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg

__all__ = [
    "hinge_pseudo_log_lik",
    "augmented_log_lik",
    "sample_inverse_gaussian",
    "sample_lambda",
    "beta_conditional",
    "sample_beta",
    "sample_omega",
    "sample_kappa",
    "multiclass_decision",
    "one_vs_all_labels",
]


def hinge_pseudo_log_lik(scores, labels_pm1, gamma):
  """log L(y | s, beta, gamma) = -2 gamma max(1 - y f, 0) (3.19).

  Args:
    scores: [...] linear scores f = beta^T s.
    labels_pm1: [...] labels in {-1, +1}.
    gamma: scalar or [...] positive trade-off parameter of (3.17).

  Returns:
    [...] element-wise pseudo-log-likelihoods.
  """
  return -2.0 * gamma * jnp.maximum(1.0 - labels_pm1 * scores, 0.0)


def augmented_log_lik(scores, labels_pm1, lam, gamma):
  """Log of the integrand of (3.20), a Gaussian in y f given lambda.

  log[sqrt(gamma / (2 pi lambda)) exp(-gamma (1 + lambda - y f)^2
  / (2 lambda))]; its exponential integrates over lambda in (0, inf) to the
  pseudo-likelihood (3.19).

  Args:
    scores: [...] linear scores f.
    labels_pm1: [...] labels in {-1, +1}.
    lam: [...] positive latent lambda.
    gamma: scalar or [...] positive.

  Returns:
    [...] element-wise log-densities.
  """
  residual = (1.0 - labels_pm1 * scores) + lam
  return (0.5 * jnp.log(gamma / (2.0 * jnp.pi * lam))
          - 0.5 * gamma * residual**2 / lam)


def sample_inverse_gaussian(key, mean, shape, sample_shape=()):
  """Draws IG(mean, shape) by the Michael-Schucany-Haas transformation.

  The density is sqrt(shape / (2 pi x^3)) exp(-shape (x - mean)^2
  / (2 mean^2 x)); its variance is mean^3 / shape. With nu ~ N(0, 1) and
  t = mean nu^2 / (2 shape), the smaller root of the transformation is
  x = mean / (1 + t + sqrt(t (t + 2))) (written without cancellation); it is
  kept with probability mean / (mean + x), otherwise mean^2 / x is returned.
  In scipy's terms this is `scipy.stats.invgauss(mean / shape, scale=shape)`.

  Args:
    key: PRNG key.
    mean: [...] positive means.
    shape: [...] positive shape parameters, broadcastable against `mean`.
    sample_shape: leading shape of independent draws.

  Returns:
    [*sample_shape, *broadcast(mean, shape).shape] draws.
  """
  dtype = jnp.result_type(mean, shape, float)
  mean, shape = jnp.broadcast_arrays(jnp.asarray(mean, dtype),
                                     jnp.asarray(shape, dtype))
  out_shape = tuple(sample_shape) + mean.shape
  normal_key, uniform_key = jax.random.split(key)
  nu = jax.random.normal(normal_key, out_shape, mean.dtype)
  uniform = jax.random.uniform(uniform_key, out_shape, mean.dtype)
  t = mean * nu**2 / (2.0 * shape)
  root = 1.0 + t + jnp.sqrt(t * (t + 2.0))
  small = mean / root
  return jnp.where(uniform * (mean + small) <= mean, small, mean * root)


def sample_lambda(key, scores, labels_pm1, gamma=1.0, eps=1e-6):
  """Draws lambda from its conditional under (3.20), element-wise.

  As a function of lambda, (3.20) is proportional to lambda^{-1/2}
  exp(-gamma u^2 / (2 lambda) - gamma lambda / 2) with u = 1 - y f, so
  1 / lambda ~ IG(mean = 1 / |u|, shape = gamma) (Polson and Scott, 2011);
  gamma enters only the shape. |u| is clipped below at `eps`.

  Args:
    key: PRNG key.
    scores: [...] linear scores f.
    labels_pm1: [...] labels in {-1, +1}.
    gamma: scalar or [...] positive.
    eps: smallest |1 - y f| used, keeping the mean finite.

  Returns:
    [...] positive lambda draws.
  """
  margin = jnp.maximum(jnp.abs(1.0 - labels_pm1 * scores), eps)
  return 1.0 / sample_inverse_gaussian(key, 1.0 / margin, gamma)


def beta_conditional(features, labels_pm1, lam, omega, gamma):
  """Gaussian conditional of beta given lambda under (3.20)-(3.21).

  With y^2 = 1, (1 + lambda_n - y_n s_n^T beta)^2 =
  (y_n (1 + lambda_n) - s_n^T beta)^2, so the conditional has precision
  P = gamma S^T diag(1 / lambda) S + diag(1 / omega) and mean
  P^{-1} gamma S^T (y (1 + lambda) / lambda).

  Args:
    features: [N, D] feature vectors s_n.
    labels_pm1: [N] labels in {-1, +1}.
    lam: [N] positive latent lambda.
    omega: [D] prior variances of beta.
    gamma: positive scalar.

  Returns:
    (mean [D], cov [D, D]), both through a Cholesky factor of P.
  """
  chol, mean = _beta_precision_cholesky(features, labels_pm1, lam, omega,
                                        gamma)
  eye = jnp.eye(features.shape[-1], dtype=chol.dtype)
  cov = jax.scipy.linalg.cho_solve((chol, True), eye)
  return mean, cov


def sample_beta(key, features, labels_pm1, lam, omega, gamma):
  """Draws beta from `beta_conditional` without forming the covariance.

  Args:
    key: PRNG key.
    features: [N, D].
    labels_pm1: [N] labels in {-1, +1}.
    lam: [N] positive latent lambda.
    omega: [D] prior variances of beta.
    gamma: positive scalar.

  Returns:
    [D] draw mean + L^{-T} z, z ~ N(0, I), with P = L L^T.
  """
  chol, mean = _beta_precision_cholesky(features, labels_pm1, lam, omega,
                                        gamma)
  noise = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jax.scipy.linalg.solve_triangular(chol, noise, trans="T",
                                                  lower=True)


def sample_omega(key, beta, kappa, eps=1e-6):
  """Draws the prior variances omega given beta and kappa (3.21).

  Reading Exp(kappa) with rate kappa, p(omega_i | beta_i, kappa) is
  proportional to omega_i^{-1/2} exp(-beta_i^2 / (2 omega_i) - kappa omega_i),
  so 1 / omega_i ~ IG(mean = sqrt(2 kappa) / |beta_i|, shape = 2 kappa).
  |beta_i| is clipped below at `eps`.

  Args:
    key: PRNG key.
    beta: [D] coefficients.
    kappa: positive scalar, the exponential rate.
    eps: smallest |beta_i| used.

  Returns:
    [D] positive omega draws.
  """
  magnitude = jnp.maximum(jnp.abs(beta), eps)
  return 1.0 / sample_inverse_gaussian(
      key, jnp.sqrt(2.0 * kappa) / magnitude, 2.0 * kappa)


def sample_kappa(key, omega, concentration, rate):
  """Draws kappa | omega ~ Gamma(a + D, b + sum_i omega_i) (3.21).

  Conjugate update of kappa ~ Gamma(a, b) (shape a, rate b) given
  omega_i ~ Exp(kappa) (rate kappa), i = 1..D.

  Args:
    key: PRNG key.
    omega: [D] positive prior variances.
    concentration: the prior shape a.
    rate: the prior rate b.

  Returns:
    Scalar draw.
  """
  posterior_shape = concentration + omega.shape[-1]
  draw = jax.random.gamma(key, jnp.asarray(posterior_shape, omega.dtype))
  return draw / (rate + omega.sum(-1))


def multiclass_decision(features, betas):
  """Labels argmax_l beta_l^T s_n of C one-versus-all machines (3.22).

  Args:
    features: [N, D].
    betas: [C, D].

  Returns:
    [N] integer labels in [0, C).
  """
  return jnp.argmax(features @ betas.T, axis=-1)


def one_vs_all_labels(labels, num_classes, dtype=jnp.int32):
  """Labels y_n^(l) = +1 if l_n = l else -1 of section 3.3.1.

  Args:
    labels: [N] integer labels in [0, num_classes).
    num_classes: C.
    dtype: output dtype.

  Returns:
    [N, C] values in {-1, +1}.
  """
  return 2 * jax.nn.one_hot(labels, num_classes, dtype=dtype) - 1


def _beta_precision_cholesky(features, labels_pm1, lam, omega, gamma):
  """Lower Cholesky factor of the conditional precision, and the mean."""
  weights = gamma / lam
  precision = (features.T @ (weights[:, None] * features)
               + jnp.diag(1.0 / omega))
  rhs = features.T @ (weights * labels_pm1 * (1.0 + lam))
  chol = jnp.linalg.cholesky(precision)
  mean = jax.scipy.linalg.cho_solve((chol, True), rhs)
  return chol, mean
