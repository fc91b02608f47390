"""The Gaussian-mixture toy of section 4.5.1 (Fig. 4.1): Stein recognition model vs VAE.

The decoder is fixed and known: ``z ~ 0.5 N(mu, I) + 0.5 N(-mu, I)`` and
``x ~ N(theta z, sigma^2 I)`` (4.55), so the exact posterior is a two-Gaussian
mixture (``dgm_jax.data.synthetic.gmm_exact_posterior``) and only encoders are
learned. The Stein recognition model ``z = f_eta(x, xi)`` is trained with the
algorithm of section 4.2: scores of the exact log joint, one SVGD move of each
example's M particles (4.12) and K Adam steps on (4.13), all through the pure
functions of ``stein_vae``. The baseline is a Gaussian encoder trained on the
reparametrized ELBO (4.1) with the same budget: as many Adam updates (K per
Stein iteration), the same minibatch size and as many latent samples per
example as the Stein model has particles. Both trainings are one jitted
``lax.scan`` that draws its minibatches inside with ``jax.random``. The
encoders see ``x / (input_scale * std(x_train))``: a large ``input_scale``
keeps the initial codes' dependence on x small next to their dependence on
xi, so where the posterior has two modes the split of the xi space between
them starts even for every x (SVGD hardly moves mass between distant modes).

Evaluation compares samples to exact posterior samples at each test point:
unbiased MMD^2 (:func:`mmd`), the mass on each side of the boundary between
the two exact components (:func:`mode_weights` against
:func:`exact_mode_weights`), and the relative errors of the posterior mean
and covariance.
"""

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dgm_jax import kernels, likelihoods
from dgm_jax.data import synthetic
from dgm_jax.models import stein_vae
from dgm_jax.models.base import make_optimizer
from dgm_jax.nets.mlp import GaussianMLP
from dgm_jax.nets.recognition import NoiseMLPEncoder

__all__ = [
    "Toy",
    "toy_from_dataset",
    "log_joint",
    "train_stein",
    "train_stein_encoder",
    "train_vae",
    "train_vae_encoder",
    "stein_samples",
    "vae_samples",
    "exact_samples",
    "mmd",
    "mode_weights",
    "exact_mode_weights",
    "evaluate",
    "history_records",
    "save_posterior_figure",
]


class Toy(NamedTuple):
  """The fixed generative model of (4.55).

  Attributes:
    theta: [Dx, Dz] decoder matrix.
    sigma: observation noise standard deviation.
    mu: [Dz]; the prior components are centred at ``mu`` and ``-mu``.
  """

  theta: np.ndarray
  sigma: float
  mu: np.ndarray


def toy_from_dataset(data):
  """The ``Toy`` stored in the extras of a ``registry.load('gmm')`` dataset."""
  extras = data.extras
  return Toy(np.asarray(extras["theta"]), float(extras["sigma"]), np.asarray(extras["mu"]))


def log_joint(toy, x, z):
  """``log p(x | z) + log p(z)`` of the toy with its fixed decoder.

  Args:
    toy: the ``Toy``.
    x: [..., Dx] observations (broadcast against z).
    z: [..., Dz] latent codes.

  Returns:
    [...] log joint densities.
  """
  theta = jnp.asarray(toy.theta, z.dtype)
  mu = jnp.asarray(toy.mu, z.dtype)
  log_var_x = 2.0 * math.log(toy.sigma)
  log_lik = jnp.sum(likelihoods.gaussian_log_prob(x, z @ theta.T, log_var_x), axis=-1)
  centers = jnp.stack([mu, -mu])  # [2, Dz]
  per_component = jnp.sum(likelihoods.gaussian_log_prob(z[..., None, :], centers, 0.0), axis=-1)
  return log_lik + jax.nn.logsumexp(per_component, axis=-1) - math.log(2.0)


def train_stein(key, x_train, toy, section, num_steps, batch_size):
  """:func:`train_stein_encoder` on the exact log joint of the ``Toy``."""
  return train_stein_encoder(key, x_train, lambda x, z: log_joint(toy, x, z), toy.mu.shape[0],
                             section, num_steps, batch_size)


def train_stein_encoder(key, x_train, log_joint_fn, latent_dim, section, num_steps, batch_size):
  """Trains the Stein recognition model f_eta(x, xi) with the algorithm of 4.2.

  Each iteration draws a minibatch and ``xi [M, Dz]`` (shared across the
  minibatch, as in (4.5)), moves the codes ``f_eta(x_n, xi_j)`` once along
  the SVGD direction of the fixed model's log joint and fits eta to the moved
  codes with ``section.encoder_steps`` Adam steps on (4.13).

  Args:
    key: PRNG key (initialization; iteration t folds t into a key split from it).
    x_train: [N, Dx] training observations.
    log_joint_fn: ``(x [..., Dx], z [..., Dz]) -> [...]``, the fixed model's log joint.
    latent_dim: Dz.
    section: the ``stein_vae`` config section.
    num_steps: Stein iterations.
    batch_size: examples per iteration.

  Returns:
    (params ``{"net", "x_scale"}``, metrics {name: [num_steps]}).
  """
  x_train = jnp.asarray(x_train)
  encoder = _stein_encoder(section, latent_dim)
  optimizer = make_optimizer(section, num_steps * section.encoder_steps, 1)
  x_scale = section.input_scale * jnp.std(x_train)
  init_key, train_key = jax.random.split(key)
  net = encoder.init(init_key, x_train[:1], jnp.zeros((1, latent_dim), x_train.dtype))

  def encode(params, x, xi):
    return encoder.apply(params, x / x_scale, xi)

  def fit(x, xi, targets, carry, _):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(lambda p: stein_vae.encoder_fit_loss(
        lambda a, b: encode(p, a, b), x, xi, targets))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def iteration(carry, step):
    batch_key, noise_key = jax.random.split(jax.random.fold_in(train_key, step))
    x = x_train[jax.random.randint(batch_key, (batch_size,), 0, x_train.shape[0])]
    xi = jax.random.normal(noise_key, (section.num_particles, latent_dim), x.dtype)
    z = encode(carry[0], x[:, None, :], xi[None])  # [B, M, Dz]
    log_p, scores = stein_vae.latent_scores(lambda c: log_joint_fn(x[:, None, :], c), z)
    moved, bandwidth = stein_vae.svgd_move(z, scores, section.svgd_step_size,
                                           convention=section.bandwidth_convention)
    carry, fit_losses = jax.lax.scan(lambda c, u: fit(x, xi, moved, c, u), carry, None,
                                     length=section.encoder_steps)
    return carry, {"loss": -jnp.mean(log_p), "encoder_fit": fit_losses[0],
                   "kernel_bandwidth": jnp.mean(bandwidth),
                   "particle_move": jnp.mean(jnp.linalg.norm(moved - z, axis=-1))}

  @jax.jit
  def run(net):
    return jax.lax.scan(iteration, (net, optimizer.init(net)), jnp.arange(num_steps))

  (net, _), metrics = run(net)
  return {"net": net, "x_scale": x_scale}, metrics


def train_vae(key, x_train, toy, section, num_steps, batch_size):
  """:func:`train_vae_encoder` on the exact log joint of the ``Toy``."""
  return train_vae_encoder(key, x_train, lambda x, z: log_joint(toy, x, z), toy.mu.shape[0],
                           section, num_steps, batch_size)


def train_vae_encoder(key, x_train, log_joint_fn, latent_dim, section, num_steps, batch_size):
  """Trains a Gaussian encoder q(z | x) on the reparametrized ELBO with the decoder fixed.

  Args:
    key: PRNG key (initialization; update t folds t into a key split from it).
    x_train: [N, Dx].
    log_joint_fn: ``(x [..., Dx], z [..., Dz]) -> [...]``, the fixed model's log joint.
    latent_dim: Dz.
    section: the ``vae`` config section (``num_samples`` codes per example).
    num_steps: Adam updates.
    batch_size: examples per update.

  Returns:
    (params ``{"net", "x_scale"}``, metrics {"loss": [num_steps]}), loss = -ELBO.
  """
  x_train = jnp.asarray(x_train)
  encoder = _vae_encoder(section, latent_dim)
  optimizer = make_optimizer(section, num_steps, 1)
  x_scale = section.input_scale * jnp.std(x_train)
  init_key, train_key = jax.random.split(key)
  net = encoder.init(init_key, x_train[:1])

  def negative_elbo(params, x, noise):
    mean, log_var = encoder.apply(params, x / x_scale)  # [B, Dz] each
    z = mean[:, None, :] + jnp.exp(0.5 * log_var)[:, None, :] * noise  # [B, S, Dz]
    entropy = 0.5 * jnp.sum(log_var + 1.0 + math.log(2.0 * math.pi), axis=-1)  # H[q], [B]
    return -jnp.mean(jnp.mean(log_joint_fn(x[:, None, :], z), axis=1) + entropy)

  def update(carry, step):
    params, opt_state = carry
    batch_key, noise_key = jax.random.split(jax.random.fold_in(train_key, step))
    x = x_train[jax.random.randint(batch_key, (batch_size,), 0, x_train.shape[0])]
    noise = jax.random.normal(noise_key, (batch_size, section.num_samples, latent_dim), x.dtype)
    loss, grads = jax.value_and_grad(negative_elbo)(params, x, noise)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

  @jax.jit
  def run(net):
    return jax.lax.scan(update, (net, optimizer.init(net)), jnp.arange(num_steps))

  (net, _), metrics = run(net)
  return {"net": net, "x_scale": x_scale}, metrics


def stein_samples(params, section, key, x, latent_dim, num_samples):
  """Draws ``f_eta(x, xi)`` with fresh ``xi`` per example and sample.

  Args:
    params: from :func:`train_stein`.
    section: the ``stein_vae`` config section.
    key: PRNG key.
    x: [N, Dx].
    latent_dim: Dz.
    num_samples: S.

  Returns:
    [N, S, Dz] samples.
  """
  x = jnp.asarray(x)
  xi = jax.random.normal(key, (x.shape[0], num_samples, latent_dim), x.dtype)
  encoder = _stein_encoder(section, latent_dim)
  return encoder.apply(params["net"], x[:, None, :] / params["x_scale"], xi)


def vae_samples(params, section, key, x, latent_dim, num_samples):
  """Draws from the Gaussian encoder q(z | x).

  Args:
    params: from :func:`train_vae`.
    section: the ``vae`` config section.
    key: PRNG key.
    x: [N, Dx].
    latent_dim: Dz.
    num_samples: S.

  Returns:
    [N, S, Dz] samples.
  """
  x = jnp.asarray(x)
  mean, log_var = _vae_encoder(section, latent_dim).apply(params["net"], x / params["x_scale"])
  noise = jax.random.normal(key, (x.shape[0], num_samples, latent_dim), x.dtype)
  return mean[:, None, :] + jnp.exp(0.5 * log_var)[:, None, :] * noise


def exact_samples(key, x, toy, num_samples):
  """[N, S, Dz] draws from the exact posterior at each of x [N, Dx]."""
  return synthetic.gmm_posterior_sample(key, x, toy.theta, toy.sigma, toy.mu, num_samples)


def mmd(x, y, bandwidth, unbiased=True):
  """Squared maximum mean discrepancy with the RBF kernel ``exp(-|a - b|^2 / bandwidth)``.

  The unbiased estimate (Gretton et al. 2012, eq. 3) leaves the diagonal
  terms ``k(x_i, x_i)`` out of the within-sample means, so it is zero in
  expectation for equal distributions and can be slightly negative; the
  biased (V-statistic) estimate keeps them and is never negative.

  Args:
    x: [N, D] samples of P.
    y: [M, D] samples of Q (N, M >= 2).
    bandwidth: kernel bandwidth h (same convention as ``kernels.rbf_kernel``).
    unbiased: which estimate.

  Returns:
    Scalar MMD^2.
  """
  num_x, num_y = x.shape[0], y.shape[0]
  k_xx = kernels.rbf_kernel(x, x, bandwidth)
  k_yy = kernels.rbf_kernel(y, y, bandwidth)
  k_xy = kernels.rbf_kernel(x, y, bandwidth)
  if unbiased:
    # The diagonal is exactly k(a, a) = 1; the Gram-form distances need not be exactly 0.
    within_x = (jnp.sum(k_xx) - jnp.trace(k_xx)) / (num_x * (num_x - 1))
    within_y = (jnp.sum(k_yy) - jnp.trace(k_yy)) / (num_y * (num_y - 1))
  else:
    within_x, within_y = jnp.mean(k_xx), jnp.mean(k_yy)
  return within_x + within_y - 2.0 * jnp.mean(k_xy)


def mode_weights(samples, means, cov):
  """Fraction of samples on each side of the boundary between two Gaussian components.

  The components ``N(means[c], cov)`` share their covariance (as the two
  components of the toy's exact posterior do), so the boundary that assigns a
  sample to the more likely component under equal weights is the hyperplane
  ``(z - (m0 + m1) / 2)^T cov^{-1} (m0 - m1) = 0`` (linear discriminant). For
  the toy ``cov^{-1} (m0 - m1)`` is ``2 mu``: the rule is the sign of the
  projection on the prior mean, thresholded halfway between the two posterior
  component means. It is a nearest-mean rule in the metric of ``cov``.

  Args:
    samples: [S, D].
    means: [2, D] component means m0, m1.
    cov: [D, D] shared covariance.

  Returns:
    [2] fractions of samples assigned to component 0 and 1.
  """
  direction = jnp.linalg.solve(cov, means[0] - means[1])
  side = (samples - 0.5 * (means[0] + means[1])) @ direction
  first = jnp.mean((side > 0).astype(samples.dtype))
  return jnp.stack([first, 1.0 - first])


def exact_mode_weights(log_weights, means, cov):
  """Mass of the mixture ``sum_c w_c N(means[c], cov)`` on each side of :func:`mode_weights`' boundary.

  With Mahalanobis distance ``delta`` between the means, component 0 puts
  ``Phi(delta / 2)`` on its own side and component 1 ``Phi(-delta / 2)``; for
  well-separated components this is the component weights themselves.

  Args:
    log_weights: [2] normalized log component weights.
    means: [2, D].
    cov: [D, D].

  Returns:
    [2] probabilities of the two sides.
  """
  diff = means[0] - means[1]
  delta = jnp.sqrt(diff @ jnp.linalg.solve(cov, diff))
  weights = jnp.exp(log_weights)
  own = jax.scipy.stats.norm.cdf(0.5 * delta)
  first = weights[0] * own + weights[1] * (1.0 - own)
  return jnp.stack([first, 1.0 - first])


def evaluate(samples_by_method, reference, posterior):
  """Compares posterior samples of each method with exact samples, test point by test point.

  The MMD bandwidth at a test point is ``2 tr(Sigma)`` of the exact component
  covariance Sigma (the mean squared distance of two draws of one component),
  the same for every method. Relative errors use the Euclidean norm of the
  mean and the Frobenius norm of the covariance of the exact mixture.

  Args:
    samples_by_method: name -> [N, S, Dz] samples at N test points.
    reference: [N, S, Dz] exact posterior samples.
    posterior: ``(log_weights [N, 2], means [N, 2, Dz], covs [N, 2, Dz, Dz])``
      of ``synthetic.gmm_exact_posterior``.

  Returns:
    (name -> {metric: float}, exact mode weights [N, 2],
    name -> mode weights [N, 2]); metrics are averages over the test points:
    ``mmd``, ``mode_weight_error`` (mean absolute error of the weights),
    ``min_mode_weight`` (the smaller of the two weights), ``mean_rel_error``,
    ``mean_error_in_std`` (the mean's error over the posterior's scale
    ``sqrt(tr C)``, meaningful also where the exact mean is near 0),
    ``cov_rel_error``; and two whitened by the exact mixture covariance C, which weigh
    every direction alike where the Frobenius and Euclidean norms follow the widest:
    ``mean_error_whitened`` (the Mahalanobis length ``|C^-1/2 (m - m_exact)|``, in
    posterior standard deviations) and ``cov_whitened_error``
    (``|C^-1/2 S C^-1/2 - I|_F / sqrt(Dz)``: 0.1 is a 10% error in the variance along
    every eigenvector of C, however narrow). The ``*_max`` entries are the largest over the
    test points instead of the mean.
  """
  log_weights, means, covs = (jnp.asarray(a, reference.dtype) for a in posterior)
  cov = covs[:, 0]
  weights = jnp.exp(log_weights)
  exact_mean = jnp.einsum("nc,ncd->nd", weights, means)
  spread = means - exact_mean[:, None, :]
  exact_cov = cov + jnp.einsum("nc,ncd,nce->nde", weights, spread, spread)
  bandwidth = 2.0 * jnp.trace(cov, axis1=-2, axis2=-1)
  exact_weights = jax.vmap(exact_mode_weights)(log_weights, means, cov)
  report, weights_by_method = {}, {}
  for name, samples in samples_by_method.items():
    method_weights = jax.vmap(mode_weights)(samples, means, cov)
    sample_mean = jnp.mean(samples, axis=1)
    sample_cov = jax.vmap(lambda s: jnp.cov(s, rowvar=False))(samples)
    mean_error = jnp.linalg.norm(sample_mean - exact_mean, axis=-1)
    whitened_mean, whitened_cov = jax.vmap(_whitened)(exact_cov, sample_mean - exact_mean,
                                                      sample_cov)
    mean_rel = mean_error / jnp.linalg.norm(exact_mean, axis=-1)
    cov_rel = (jnp.linalg.norm(sample_cov - exact_cov, axis=(-2, -1))
               / jnp.linalg.norm(exact_cov, axis=(-2, -1)))
    report[name] = {
        "mmd": jnp.mean(jax.lax.map(lambda a: mmd(*a), (samples, reference, bandwidth))),
        "mode_weight_error": jnp.mean(jnp.abs(method_weights - exact_weights)),
        "min_mode_weight": jnp.mean(jnp.min(method_weights, axis=1)),
        "mean_rel_error": jnp.mean(mean_rel),
        "mean_rel_error_max": jnp.max(mean_rel),
        "mean_error_in_std": jnp.mean(mean_error / jnp.sqrt(jnp.trace(exact_cov, axis1=-2,
                                                                      axis2=-1))),
        "mean_error_whitened": jnp.mean(whitened_mean),
        "cov_rel_error": jnp.mean(cov_rel),
        "cov_rel_error_max": jnp.max(cov_rel),
        "cov_whitened_error": jnp.mean(whitened_cov),
        "cov_whitened_error_max": jnp.max(whitened_cov),
    }
    report[name] = {k: float(v) for k, v in report[name].items()}
    weights_by_method[name] = np.asarray(method_weights)
  return report, np.asarray(exact_weights), weights_by_method


def _whitened(exact_cov, mean_error, sample_cov):
  """``(|C^-1/2 e|, |C^-1/2 S C^-1/2 - I|_F / sqrt(D))`` for the exact covariance C (symmetric
  inverse square root from its eigendecomposition)."""
  eigenvalues, eigenvectors = jnp.linalg.eigh(exact_cov)
  inv_sqrt = (eigenvectors / jnp.sqrt(eigenvalues)) @ eigenvectors.T
  identity = jnp.eye(exact_cov.shape[-1], dtype=exact_cov.dtype)
  relative = inv_sqrt @ sample_cov @ inv_sqrt - identity
  return (jnp.linalg.norm(inv_sqrt @ mean_error),
          jnp.linalg.norm(relative) / jnp.sqrt(exact_cov.shape[-1]))


def history_records(metrics_by_method, log_every):
  """Train metrics every ``log_every`` Stein iterations as ``metrics.jsonl`` rows, each
  the mean over the iterations since the row before, as the training loop's rows.

  Args:
    metrics_by_method: name -> {metric: [T_name]}; a method with k times as
      many updates as the first is averaged over blocks of k, so rows align.
    log_every: row spacing.

  Returns:
    A list of ``(step, {"<name>/<metric>": float})``.
  """
  num_steps = len(next(iter(next(iter(metrics_by_method.values())).values())))
  flat = {}
  for name, metrics in metrics_by_method.items():
    for metric, values in metrics.items():
      values = np.asarray(values, np.float64)
      flat[f"{name}/{metric}"] = values.reshape(num_steps, -1).mean(axis=1)
  ends = list(range(log_every, num_steps + 1, log_every)) or [num_steps]
  starts = [0] + ends[:-1]
  return [(end, {k: float(np.mean(v[start:end])) for k, v in flat.items()})
          for start, end in zip(starts, ends)]


def save_posterior_figure(path, x, samples_by_method, num_points, max_dots=500):
  """Fig. 4.1: scatter plots of posterior samples in z space, one row per test point.

  Args:
    path: PNG file to write (its folder is created).
    x: [N, Dx] test observations (for the row titles).
    samples_by_method: name -> [N, S, 2] samples (2-D latent codes), in column order.
    num_points: rows (first test points).
    max_dots: samples drawn per panel.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(samples_by_method)
  rows = min(num_points, x.shape[0])
  fig, axes = plt.subplots(rows, len(names), figsize=(3.2 * len(names), 3.0 * rows),
                           sharex="row", sharey="row", squeeze=False)
  for row in range(rows):
    for col, name in enumerate(names):
      dots = np.asarray(samples_by_method[name][row, :max_dots])
      ax = axes[row, col]
      ax.scatter(dots[:, 0], dots[:, 1], s=3, alpha=0.4, color=f"C{col}")
      ax.set_title(f"{name}, x = {np.array2string(np.asarray(x[row]), precision=2)}", fontsize=8)
      ax.set_xlabel("z1", fontsize=8)
      ax.set_ylabel("z2", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _stein_encoder(section, latent_dim):
  return NoiseMLPEncoder(tuple(section.encoder_hidden), latent_dim, section.activation)


def _vae_encoder(section, latent_dim):
  return GaussianMLP(tuple(section.hidden_sizes), latent_dim, section.activation)
