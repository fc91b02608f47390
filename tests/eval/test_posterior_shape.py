"""q against the Laplace approximation (eval.posterior_shape), on Gaussians whose answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm_jax.eval import nll, posterior_shape


def random_precision(key, dim):
  a = jax.random.normal(key, (dim, dim))
  return a @ a.T + 0.5 * jnp.eye(dim)


def gaussian_log_joint(mean, precision):
  def log_joint(z):  # [n, D] -> [n]
    diff = z - mean
    return -0.5 * jnp.einsum("nd,de,ne->n", diff, precision, diff)
  return log_joint


@pytest.mark.parametrize("scale,seed", [(0.1, 0), (1.0, 1), (4.0, 2)])
def test_scaled_posterior_covariance_against_the_closed_form_kl(scale, seed):
  """q = N(mu + delta, c H^-1) for a true posterior N(mu, H^-1): every whitened variance is c,
  the offset is delta^T H delta and the KL is (d (c - 1 - log c) + delta^T H delta) / 2."""
  dim, num = 4, 200_000
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  precision = random_precision(keys[0], dim)
  mean = jax.random.normal(keys[1], (dim,))
  delta = 0.3 * jax.random.normal(keys[2], (dim,))
  root = jnp.linalg.cholesky(jnp.linalg.inv(precision))  # root root^T = H^-1
  samples = mean + delta + jnp.sqrt(scale) * jax.random.normal(keys[3], (num, dim)) @ root.T
  got = jax.jit(lambda s: posterior_shape.shape_mismatch(
      gaussian_log_joint(mean, precision), s))(samples)
  assert set(got) == set(posterior_shape.SHAPE_METRICS)
  offset = float(delta @ precision @ delta)
  np.testing.assert_allclose(got["whitened_var_min"], scale, rtol=0.03)
  np.testing.assert_allclose(got["whitened_var_max"], scale, rtol=0.03)
  np.testing.assert_allclose(got["mahalanobis_sq"], offset, rtol=0.05, atol=0.02 * scale)
  expected_kl = 0.5 * (dim * (scale - 1 - np.log(scale)) + offset)
  np.testing.assert_allclose(got["kl_gaussian"], expected_kl, rtol=0.05, atol=0.01)
  np.testing.assert_allclose(got["log_det_precision"], np.linalg.slogdet(precision)[1],
                             rtol=1e-8)


def test_a_q_narrow_along_one_axis_and_wide_along_another():
  """Whitened variances read off where q is too narrow and where too wide."""
  dim = 3
  precision = jnp.diag(jnp.array([100.0, 1.0, 0.25]))  # posterior std 0.1, 1, 2
  q_std = jnp.array([0.1 * 0.2, 1.0, 2.0 * 3.0])  # variance ratios 0.04, 1, 9
  samples = q_std * jax.random.normal(jax.random.PRNGKey(0), (200_000, dim))
  got = posterior_shape.shape_mismatch(gaussian_log_joint(jnp.zeros(dim), precision), samples)
  np.testing.assert_allclose(got["whitened_var_min"], 0.04, rtol=0.03)
  np.testing.assert_allclose(got["whitened_var_median"], 1.0, rtol=0.03)
  np.testing.assert_allclose(got["whitened_var_max"], 9.0, rtol=0.03)


def test_shorter_newton_steps_reach_a_mode_that_full_steps_cannot():
  """log p = -sum a log cosh(z - mu): from 6 away the curvature is ~1e-4, floored at 1e-2, so
  the full Newton step overshoots and is refused; the scaled steps get to the mode."""
  mu = jnp.array([0.5, -1.0])

  def log_joint(z):
    return -jnp.sum(2.0 * jnp.log(jnp.cosh(z - mu)), axis=-1)

  start = mu + 6.0
  full, _, _ = nll.laplace_proposal(log_joint, start, num_newton_steps=20)
  scaled, precisions, _ = nll.laplace_proposal(
      log_joint, start, num_newton_steps=20, step_scales=posterior_shape.NEWTON_STEP_SCALES)
  assert np.max(np.abs(full - start)) < 1e-9  # stuck where it started
  np.testing.assert_allclose(scaled, mu, atol=1e-6)
  np.testing.assert_allclose(precisions, 2.0, rtol=1e-6)  # a sech^2(0) = 2 at the mode


def test_entropy_deficit_of_a_gaussian_is_zero_and_of_a_folded_q_is_known():
  """A Gaussian q with its exact log q: deficit 0. q folded by z = (xi_1, |xi_2|), a normal
  times a half-normal: its entropy and its moment-matched Gaussian's are known in closed form."""
  dim, num = 2, 400_000
  precision = jnp.eye(dim)
  xi = jax.random.normal(jax.random.PRNGKey(0), (num, dim))
  gaussian_log_q = -0.5 * jnp.sum(xi**2, -1) - np.log(2 * np.pi)
  got = posterior_shape.shape_mismatch(gaussian_log_joint(jnp.zeros(dim), precision), xi,
                                       gaussian_log_q)
  np.testing.assert_allclose(got["entropy_deficit"], 0.0, atol=0.01)
  # z = (xi_1, |xi_2|): density 2 N(z_1) N(z_2) on z_2 > 0, entropy H(N) + H(N) - log 2;
  # its second coordinate has variance 1 - 2 / pi, so the moment-matched Gaussian entropy is
  # H(N) + H(N) + log(1 - 2 / pi) / 2.
  folded = xi.at[:, 1].set(jnp.abs(xi[:, 1]))
  got = posterior_shape.shape_mismatch(gaussian_log_joint(jnp.zeros(dim), precision), folded,
                                       gaussian_log_q + np.log(2.0))
  np.testing.assert_allclose(got["entropy_deficit"], 0.5 * np.log(1 - 2 / np.pi) + np.log(2.0),
                             atol=0.01)
  # The exact identity KL(q || N) = kl_gaussian + entropy_deficit, by Monte Carlo.
  log_n = -0.5 * jnp.sum(folded**2, -1) - np.log(2 * np.pi)
  np.testing.assert_allclose(jnp.mean(gaussian_log_q + np.log(2.0) - log_n),
                             got["kl_gaussian"] + got["entropy_deficit"], atol=0.01)


@pytest.mark.parametrize("dim,num", [(20, 100), (50, 1000)])
def test_gaussian_entropy_from_samples_is_unbiased(dim, num):
  """Over 400 sample covariances of n Gaussian draws, the corrected entropy averages to the
  true one within 4 standard errors, where the plain plug-in reads low by far more."""
  covariance = random_precision(jax.random.PRNGKey(0), dim) / dim
  root = jnp.linalg.cholesky(covariance)
  draws = jax.random.normal(jax.random.PRNGKey(1), (400, num, dim)) @ root.T
  sample_covs = jax.vmap(lambda d: jnp.cov(d, rowvar=False))(draws.astype(jnp.float64))
  truth = float(posterior_shape.gaussian_entropy(covariance.astype(jnp.float64)))
  plain = np.asarray(jax.vmap(posterior_shape.gaussian_entropy)(sample_covs))
  corrected = np.asarray(jax.vmap(lambda c: posterior_shape.gaussian_entropy(c, num))(
      sample_covs))
  stderr = corrected.std() / np.sqrt(corrected.size)
  assert abs(corrected.mean() - truth) < 4 * stderr, (corrected.mean(), truth, stderr)
  assert truth - plain.mean() > 20 * stderr, (plain.mean(), truth, stderr)


def test_vae_posterior_shape_passes_its_gaussian_log_q():
  """Through the VAE's own ``posterior_shape``: its q is Gaussian and its log q exact, so
  the entropy deficit of each image is 0 within the estimates' noise (about 0.1 nats for
  D = 50 and 2,000 draws), where a log q of the wrong shape or scale would be far off."""
  from configs import mnist
  from dgm_jax.data import pipeline, registry
  from dgm_jax.models import vae
  from dgm_jax.models.base import DataSpec
  config = mnist.get_config("smoke")
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  method = vae.make_method(config, spec)
  batch = pipeline.get_batch(data, "test", 0, 4, 0)
  batch["index"] = jnp.arange(4, dtype=jnp.int32)
  params = method.init(jax.random.PRNGKey(0), batch).params
  # Codes of log-variances from -4 to 2 (the output's second half), so a log q with the
  # wrong widths is far off, not only at the initial ones near 0.
  out = params["encoder"]["params"]["MLP_0"]["Dense_2"]
  out["bias"] = out["bias"].at[50:].set(jnp.linspace(-4.0, 2.0, 50, dtype=out["bias"].dtype))
  got = jax.jit(method.posterior_shape, static_argnums=3)(params, batch, jax.random.PRNGKey(1),
                                                          2000)
  assert config.vae.latent_dim == 50
  np.testing.assert_allclose(got["entropy_deficit"], 0.0, atol=0.4)
