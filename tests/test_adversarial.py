"""Property tests of dgm_jax.adversarial against independent truths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special, stats

from dgm_jax import adversarial

BATCH = 8
SUPPORT = 6

logits = hnp.arrays(np.float64, (BATCH,),
                    elements=st.floats(-30.0, 30.0, allow_subnormal=False))
values = hnp.arrays(np.float64, (BATCH,),
                    elements=st.floats(-1e3, 1e3, allow_subnormal=False))
probabilities = hnp.arrays(np.float64, (SUPPORT,),
                           elements=st.floats(0.01, 1.0)).map(lambda p: p / p.sum())


def _expected_loss(f, p_real, p_fake):
  """E_{i~p_real, j~p_fake} discriminator_loss(f_i, f_j), exact on the support."""
  pair_losses = adversarial.discriminator_loss(f[:, None], f[None, :])
  return p_real @ pair_losses @ p_fake


_expected_loss_grad = jax.jit(jax.grad(_expected_loss))


class TestDiscriminatorLoss:

  @given(logits, logits)
  def test_matches_binary_cross_entropy(self, f_real, f_fake):
    # 1 - sigmoid(f) = sigmoid(-f); scipy's log_expit is accurate for any f.
    expected = -special.log_expit(f_real) - special.log_expit(-f_fake)
    got = adversarial.discriminator_loss(f_real, f_fake)
    assert got.shape == (BATCH,)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)

  @given(probabilities, probabilities)
  def test_gradient_vanishes_at_optimal_logit(self, p_real, p_fake):
    f_star = adversarial.optimal_logit(np.log(p_real), np.log(p_fake))
    grad = _expected_loss_grad(f_star, p_real, p_fake)
    np.testing.assert_allclose(grad, 0.0, atol=1e-15)
    # The gradient at a non-optimal logit is not zero: the check can fail.
    grad_off = _expected_loss_grad(f_star + 0.1, p_real, p_fake)
    assert np.all(np.abs(grad_off) > 1e-6)

  @given(probabilities, probabilities,
         hnp.arrays(np.float64, (SUPPORT,), elements=st.floats(-3.0, 3.0)))
  def test_optimal_logit_is_the_minimum(self, p_real, p_fake, delta):
    if np.max(np.abs(delta)) < 1e-3:
      delta = np.full(SUPPORT, 1e-3)
    f_star = adversarial.optimal_logit(np.log(p_real), np.log(p_fake))
    at_optimum = _expected_loss(f_star, p_real, p_fake)
    assert _expected_loss(f_star + delta, p_real, p_fake) > at_optimum
    # Minimum value 2 log 2 - 2 JS(p_real, p_fake).
    mixture = 0.5 * (p_real + p_fake)
    js = 0.5 * stats.entropy(p_real, mixture) + 0.5 * stats.entropy(p_fake, mixture)
    np.testing.assert_allclose(at_optimum, 2.0 * np.log(2.0) - 2.0 * js, rtol=1e-10)

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
  def test_finite_at_extreme_logits(self, dtype):
    big = jnp.asarray(1e4, dtype)
    naive = -jnp.log(jax.nn.sigmoid(-big))
    assert not jnp.isfinite(naive)  # log(sigmoid(.)) would fail here
    confident_right = adversarial.discriminator_loss(big, -big)
    confident_wrong = adversarial.discriminator_loss(-big, big)
    assert confident_right == 0.0
    np.testing.assert_allclose(confident_wrong, 2e4, rtol=1e-6)
    grads = jax.grad(lambda r, f: adversarial.discriminator_loss(r, f),
                     argnums=(0, 1))(-big, big)
    np.testing.assert_allclose(grads, (-1.0, 1.0))

  @given(logits, logits)
  def test_jit_equals_eager(self, f_real, f_fake):
    np.testing.assert_allclose(
        jax.jit(adversarial.discriminator_loss)(f_real, f_fake),
        adversarial.discriminator_loss(f_real, f_fake), rtol=1e-14)


class TestNamedDiscriminatorLosses:

  @given(logits, logits)
  def test_real_is_the_first_argument(self, f_real, f_fake):
    expected = adversarial.discriminator_loss(f_real, f_fake)
    for loss in (adversarial.psi1_loss, adversarial.psi2_loss,
                 adversarial.ali_discriminator_loss):
      np.testing.assert_array_equal(loss(f_real, f_fake), expected)
      np.testing.assert_array_equal(jax.jit(loss)(f_real, f_fake), expected)


class TestAliGeneratorLoss:

  @given(logits, logits)
  def test_saturating_is_the_objective_5_1(self, f_q, f_p):
    expected = special.log_expit(f_q) + special.log_expit(-f_p)
    got = adversarial.ali_generator_loss(f_q, f_p)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got, -adversarial.ali_discriminator_loss(f_q, f_p))

  @given(logits, logits)
  def test_non_saturating_swaps_labels(self, f_q, f_p):
    expected = -special.log_expit(-f_q) - special.log_expit(f_p)
    got = adversarial.ali_generator_loss(f_q, f_p, non_saturating=True)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)

  @given(logits, logits)
  def test_gradients_have_the_same_sign(self, f_q, f_p):
    def total(non_saturating):
      return lambda q, p: jnp.sum(
          adversarial.ali_generator_loss(q, p, non_saturating=non_saturating))
    saturating = jax.grad(total(False), argnums=(0, 1))(f_q, f_p)
    non_saturating = jax.grad(total(True), argnums=(0, 1))(f_q, f_p)
    for g_sat, g_ns in zip(saturating, non_saturating):
      assert np.all(np.sign(g_sat) == np.sign(g_ns))

  @given(logits, logits, st.booleans())
  def test_jit_equals_eager(self, f_q, f_p, non_saturating):
    jitted = jax.jit(adversarial.ali_generator_loss, static_argnames="non_saturating")
    np.testing.assert_allclose(
        jitted(f_q, f_p, non_saturating=non_saturating),
        adversarial.ali_generator_loss(f_q, f_p, non_saturating=non_saturating),
        rtol=1e-14)


class TestOptimalLogit:

  @given(probabilities, probabilities)
  def test_sigmoid_is_the_posterior_of_real(self, p_real, p_fake):
    f_star = adversarial.optimal_logit(np.log(p_real), np.log(p_fake))
    np.testing.assert_allclose(jax.nn.sigmoid(f_star), p_real / (p_real + p_fake),
                               rtol=1e-12)
    np.testing.assert_allclose(
        jax.jit(adversarial.optimal_logit)(np.log(p_real), np.log(p_fake)), f_star,
        rtol=1e-14)


# Linear-Gaussian toy: p(z) = N(0, 1), p(x|z) = N(a z, s^2), q(x) = N(0, v),
# q(z|x) = N(b x, t^2); joints over (x, z) are zero-mean Gaussians.
NUM_SAMPLES = 100_000
toy_params = st.fixed_dictionaries({
    "a": st.floats(-2.0, 2.0), "s": st.floats(0.3, 2.0),
    "b": st.floats(-2.0, 2.0), "t": st.floats(0.3, 2.0),
    "v": st.floats(0.5, 3.0)})


def _covariances(a, s, b, t, v):
  decoder = np.array([[a * a + s * s, a], [a, 1.0]])  # p_theta(x, z)
  encoder = np.array([[v, b * v], [b * v, b * b * v + t * t]])  # q_phi(x, z)
  return decoder, encoder


def _kl_zero_mean_gaussians(cov0, cov1):
  """KL(N(0, cov0) || N(0, cov1)) in closed form."""
  dim = cov0.shape[0]
  return 0.5 * (np.trace(np.linalg.solve(cov1, cov0)) - dim
                + np.linalg.slogdet(cov1)[1] - np.linalg.slogdet(cov0)[1])


def _expected_gaussian_log_density(data_var, model_var):
  """E_{y ~ N(0, data_var)} log N(y; 0, model_var)."""
  return -0.5 * np.log(2 * np.pi * model_var) - data_var / (2 * model_var)


def _mean_and_stderr(values):
  values = np.asarray(values)
  return values.mean(), values.std() / np.sqrt(values.size)


def _toy_samples(a, s, b, t, v, seed):
  rng = np.random.default_rng(seed)
  eps = rng.standard_normal((4, NUM_SAMPLES))
  x_q = np.sqrt(v) * eps[0]
  z_q = b * x_q + t * eps[1]  # encoder pairs ~ q_phi(x, z)
  z_p = eps[2]
  x_p = a * z_p + s * eps[3]  # decoder pairs ~ p_theta(x, z)
  return x_q, z_q, x_p, z_p


def _toy_log_densities(x, z, a, s, b, t, v):
  norm = stats.norm.logpdf
  return {
      "p_z": norm(z, 0.0, 1.0),
      "p_x_given_z": norm(x, a * z, s),
      "p_x": norm(x, 0.0, np.sqrt(a * a + s * s)),
      "q_x": norm(x, 0.0, np.sqrt(v)),
      "q_z_given_x": norm(z, b * x, t),
      "q_z": norm(z, 0.0, np.sqrt(b * b * v + t * t)),
  }


class TestAsvaeEncoderPairTerm:

  @given(toy_params)
  def test_mean_is_l_vaex_with_optimal_psi1(self, params):
    a, s, b, t, v = (params[k] for k in "asbtv")
    decoder_cov, encoder_cov = _covariances(a, s, b, t, v)
    x, z, _, _ = _toy_samples(a, s, b, t, v, seed=0)
    log = _toy_log_densities(x, z, a, s, b, t, v)
    f_psi1 = adversarial.optimal_logit(log["q_x"] + log["q_z_given_x"],
                                       log["p_x"] + log["p_z"])
    term = adversarial.asvae_encoder_pair_term(log["p_x_given_z"], f_psi1)
    # (5.12): L_VAEx = E_q(x) log p_theta(x) - KL(q_phi(x, z) || p_theta(x, z)).
    l_vaex = (_expected_gaussian_log_density(v, a * a + s * s)
              - _kl_zero_mean_gaussians(encoder_cov, decoder_cov))
    mean, stderr = _mean_and_stderr(term)
    assert abs(mean - l_vaex) <= 5 * stderr + 1e-12
    # (5.15) as printed, f_psi1 - log p(x|z), estimates -L_VAEx instead.
    printed_mean, printed_stderr = _mean_and_stderr(-term)
    assert abs(printed_mean - l_vaex) > 5 * printed_stderr
    # Corollary 8: E_q f_psi1* = KL(q_phi(x, z) || p_theta(x) p(z)).
    product_cov = np.diag([a * a + s * s, 1.0])
    f_mean, f_stderr = _mean_and_stderr(f_psi1)
    kl_to_product = _kl_zero_mean_gaussians(encoder_cov, product_cov)
    assert abs(f_mean - kl_to_product) <= 5 * f_stderr + 1e-12

  @given(toy_params)
  def test_psi1_loss_is_stationary_at_corollary_8_logit(self, params):
    a, s, b, t, v = (params[k] for k in "asbtv")
    x_q, z_q, x_p, _ = _toy_samples(a, s, b, t, v, seed=1)
    z_indep = np.random.default_rng(2).standard_normal(NUM_SAMPLES)

    def f_star(x, z):
      log = _toy_log_densities(x, z, a, s, b, t, v)
      return adversarial.optimal_logit(log["q_x"] + log["q_z_given_x"],
                                       log["p_x"] + log["p_z"])

    f_real, f_fake = f_star(x_q, z_q), f_star(x_p, z_indep)
    _assert_stationary(adversarial.psi1_loss, f_real, f_fake)

  @given(values, values)
  def test_jit_equals_eager(self, log_px_given_z, f_psi1):
    np.testing.assert_array_equal(
        jax.jit(adversarial.asvae_encoder_pair_term)(log_px_given_z, f_psi1),
        adversarial.asvae_encoder_pair_term(log_px_given_z, f_psi1))


class TestAsvaeDecoderPairTerm:

  @given(toy_params)
  def test_mean_is_l_vaez_with_optimal_psi2(self, params):
    a, s, b, t, v = (params[k] for k in "asbtv")
    decoder_cov, encoder_cov = _covariances(a, s, b, t, v)
    _, _, x, z = _toy_samples(a, s, b, t, v, seed=3)
    log = _toy_log_densities(x, z, a, s, b, t, v)
    f_psi2 = adversarial.optimal_logit(log["p_z"] + log["p_x_given_z"],
                                       log["q_x"] + log["q_z"])
    term = adversarial.asvae_decoder_pair_term(log["q_z_given_x"], f_psi2)
    # (5.13): L_VAEz = E_p(z) log q_phi(z) - KL(p_theta(x, z) || q_phi(x, z)).
    l_vaez = (_expected_gaussian_log_density(1.0, b * b * v + t * t)
              - _kl_zero_mean_gaussians(decoder_cov, encoder_cov))
    mean, stderr = _mean_and_stderr(term)
    assert abs(mean - l_vaez) <= 5 * stderr + 1e-12
    printed_mean, printed_stderr = _mean_and_stderr(-term)
    assert abs(printed_mean - l_vaez) > 5 * printed_stderr
    product_cov = np.diag([v, b * b * v + t * t])
    f_mean, f_stderr = _mean_and_stderr(f_psi2)
    kl_to_product = _kl_zero_mean_gaussians(decoder_cov, product_cov)
    assert abs(f_mean - kl_to_product) <= 5 * f_stderr + 1e-12

  @given(toy_params)
  def test_psi2_loss_is_stationary_at_corollary_8_logit(self, params):
    a, s, b, t, v = (params[k] for k in "asbtv")
    x_q, _, x_p, z_p = _toy_samples(a, s, b, t, v, seed=4)
    # z ~ q_phi(z | x') for an independent data point x'.
    rng = np.random.default_rng(5)
    z_aggregate = b * np.sqrt(v) * rng.standard_normal(NUM_SAMPLES) + t * rng.standard_normal(
        NUM_SAMPLES)

    def f_star(x, z):
      log = _toy_log_densities(x, z, a, s, b, t, v)
      return adversarial.optimal_logit(log["p_z"] + log["p_x_given_z"],
                                       log["q_x"] + log["q_z"])

    f_real, f_fake = f_star(x_p, z_p), f_star(x_q, z_aggregate)
    _assert_stationary(adversarial.psi2_loss, f_real, f_fake)

  @given(values, values)
  def test_jit_equals_eager(self, log_qz_given_x, f_psi2):
    np.testing.assert_array_equal(
        jax.jit(adversarial.asvae_decoder_pair_term)(log_qz_given_x, f_psi2),
        adversarial.asvae_decoder_pair_term(log_qz_given_x, f_psi2))


def _assert_stationary(loss, f_real, f_fake):
  """The MC loss of logits ``scale * f + shift`` has zero gradient at (1, 0).

  Per-sample derivatives give the Monte-Carlo standard error of each
  gradient component; a wrong pairing or sign moves the stationary point.
  """
  def mean_loss(scale_shift):
    scale, shift = scale_shift
    return jnp.mean(loss(scale * f_real + shift, scale * f_fake + shift))

  grad = jax.grad(mean_loss)(jnp.array([1.0, 0.0]))
  # d/d(shift) and d/d(scale) per sample, real and fake halves independent.
  d_real = -jax.nn.sigmoid(-f_real)
  d_fake = jax.nn.sigmoid(f_fake)
  for component, (real, fake) in enumerate([(d_real, d_fake),
                                            (d_real * f_real, d_fake * f_fake)]):
    stderr = np.sqrt(np.var(real) / real.size + np.var(fake) / fake.size)
    assert abs(grad[component]) <= 5 * stderr + 1e-12


# A linear-Gaussian toy with offsets, as a function of the players' parameters:
# q(x) = N(m, v) data, p(z) = N(0, 1), decoder p_theta(x|z) = N(a z + b, s^2),
# encoder q_phi(z|x) = N(c x + d, t^2); theta = (a, b, log s), phi = (c, d, log t).
DATA_MEAN, DATA_VAR = 1.5, 0.8


def _gaussian_cross_entropy(mean1, cov1, mean2, cov2):
  """E_{y ~ N(mean1, cov1)} log N(y; mean2, cov2), in closed form."""
  diff = mean1 - mean2
  dim = mean1.shape[0]
  return -0.5 * (dim * jnp.log(2 * jnp.pi) + jnp.linalg.slogdet(cov2)[1]
                 + jnp.trace(jnp.linalg.solve(cov2, cov1)) + diff @ jnp.linalg.solve(cov2, diff))


def _toy_joints(theta, phi):
  (a, b, log_s), (c, d, log_t) = theta, phi
  s2, t2 = jnp.exp(2 * log_s), jnp.exp(2 * log_t)
  m, v = DATA_MEAN, DATA_VAR
  decoder = (jnp.array([b, 0.0]), jnp.array([[a * a + s2, a], [a, 1.0]]))  # p_theta(x, z)
  encoder = (jnp.array([m, c * m + d]), jnp.array([[v, c * v], [c * v, c * c * v + t2]]))
  return decoder, encoder


def _asvae_objective(theta, phi):
  """(5.14) at the optimal discriminators, in closed form (the truth for its gradient):
  ``L_VAEx + L_VAEz = E_q(x) log p_theta(x) - KL(q || p) + E_p(z) log q_phi(z) - KL(p || q)``."""
  decoder, encoder = _toy_joints(theta, phi)
  ce = _gaussian_cross_entropy
  marginal = lambda joint, i: (joint[0][i:i + 1], joint[1][i:i + 1, i:i + 1])
  l_vaex = (ce(*encoder, *decoder) - ce(*encoder, *encoder)
            + ce(*marginal(encoder, 0), *marginal(decoder, 0)))
  l_vaez = (ce(*decoder, *encoder) - ce(*decoder, *decoder)
            + ce(*marginal(decoder, 1), *marginal(encoder, 1)))
  return l_vaex + l_vaez


def _toy_estimate(theta, phi, noise, negatives):
  """The AS-VAE surrogate of (5.14) on samples, with the discriminators at their optima
  (5.5) for the current players but held fixed, as in training."""
  frozen_decoder, frozen_encoder = jax.lax.stop_gradient(_toy_joints(theta, phi))

  def log_density(joint, x, z, which=None):
    mean, cov = joint
    if which is None:
      return jax.scipy.stats.multivariate_normal.logpdf(jnp.stack([x, z], -1), mean, cov)
    y = x if which == 0 else z
    return jax.scipy.stats.norm.logpdf(y, mean[which], jnp.sqrt(cov[which, which]))

  def f_psi1(x, z):  # log q(x, z) - log p(x) p(z)
    return (log_density(frozen_encoder, x, z) - log_density(frozen_decoder, x, z, 0)
            - log_density(frozen_decoder, x, z, 1))

  def f_psi2(x, z):  # log p(x, z) - log q(x) q(z)
    return (log_density(frozen_decoder, x, z) - log_density(frozen_encoder, x, z, 0)
            - log_density(frozen_encoder, x, z, 1))

  (a, b, log_s), (c, d, log_t) = theta, phi
  x = DATA_MEAN + jnp.sqrt(DATA_VAR) * noise[0]
  z_encoder = c * x + d + jnp.exp(log_t) * noise[1]
  z_prior, z_independent = noise[2], noise[3]
  x_decoder = a * z_prior + b + jnp.exp(log_s) * noise[4]
  norm = jax.scipy.stats.norm.logpdf
  encoder_pairs = adversarial.asvae_encoder_pair_term(
      norm(x, a * z_encoder + b, jnp.exp(log_s)), f_psi1(x, z_encoder))
  decoder_pairs = adversarial.asvae_decoder_pair_term(
      norm(z_prior, c * x_decoder + d, jnp.exp(log_t)), f_psi2(x_decoder, z_prior))
  total = jnp.mean(encoder_pairs) + jnp.mean(decoder_pairs)
  if negatives:  # (5.3)'s and (5.4)'s negative pairs, as in models.asvae
    total = (total + adversarial.negative_pair_term(f_psi1(x_decoder, z_independent))
             + adversarial.negative_pair_term(f_psi2(x, jnp.roll(z_encoder, 1))))
  return total


class TestNegativePairTerm:

  @pytest.mark.parametrize("theta, phi", [
      # q_phi(z) wider than half of p(z)'s variance and p_theta(x) than half of q(x)'s, so
      # the negatives' weights exp f* have finite variance and the standard error means it
      ((0.7, -0.4, np.log(0.6)), (0.3, 0.0, np.log(1.2))),
      ((-1.2, 2.0, np.log(1.3)), (-0.5, -0.3, np.log(1.1))),
  ])
  def test_surrogate_gradient_is_the_objectives_with_negative_pairs(self, theta, phi):
    theta, phi = jnp.array(theta), jnp.array(phi)
    truth = np.concatenate(jax.grad(_asvae_objective, argnums=(0, 1))(theta, phi))
    grad = jax.jit(jax.grad(_toy_estimate, argnums=(0, 1)), static_argnums=3)
    seeds = 8

    def estimates(negatives):
      return np.stack([np.concatenate(grad(theta, phi, jax.random.normal(
          jax.random.PRNGKey(seed), (5, 50_000), jnp.float64), negatives))
                       for seed in range(seeds)])

    for negatives in (True, False):
      draws = estimates(negatives)
      error = np.abs(draws.mean(0) - truth)
      stderr = draws.std(0, ddof=1) / np.sqrt(seeds)
      if negatives:
        np.testing.assert_array_less(error, 5 * stderr + 1e-3)
      else:  # the dissertation's surrogate misses the decoder's p_theta(x) and the
        # encoder's q_phi(z): the decoder's offset b and the encoder's d are off
        assert error[1] > 10 * stderr[1] + 0.05 and error[4] > 10 * stderr[4] + 0.05

  def test_is_the_log_mean_exp_and_finite_for_large_logits(self):
    f = jnp.array([1e4, 1e4 - 1.0, -1e4], jnp.float32)
    np.testing.assert_allclose(adversarial.negative_pair_term(f),
                               1e4 + np.log1p(np.exp(-1.0)) - np.log(3.0), rtol=1e-6)
    grad = jax.grad(adversarial.negative_pair_term)(f)
    np.testing.assert_allclose(grad, special.softmax(np.asarray(f, np.float64)), atol=1e-6)


class TestInputGradientPenalty:

  def test_is_the_squared_norm_of_the_x_and_z_gradients(self):
    """Logit a . x + c . z + d tanh(z_0) on x [B, 2, 3], z [B, 2]: the per-row squared input
    gradient is the closed form |a|^2 + |c + d sech^2(z_0) e_0|^2 (for d = 0, the squared
    norm of the whole weight vector, x and z parts), and the logits are numpy's."""
    rng = np.random.default_rng(0)
    a, c = rng.normal(size=(2, 3)), rng.normal(size=2)
    x, z = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2))
    for d in (0.0, 1.5):
      def logit_fn(x, z, d=d):
        return jnp.sum(x * a, axis=(1, 2)) + z @ c + d * jnp.tanh(z[:, 0])
      logits, grad_sq = adversarial.logits_and_input_gradient_sq(logit_fn, x, z)
      np.testing.assert_allclose(
          logits, np.sum(x * a, axis=(1, 2)) + z @ c + d * np.tanh(z[:, 0]), rtol=1e-12)
      grad_z = np.tile(c, (4, 1))
      grad_z[:, 0] += d / np.cosh(z[:, 0])**2
      np.testing.assert_allclose(grad_sq, np.sum(a**2) + np.sum(grad_z**2, axis=1),
                                 rtol=1e-12)
