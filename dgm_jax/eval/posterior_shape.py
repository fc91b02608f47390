"""How far an encoder's q(z | x) is from the posterior's shape (diagnostic for 4.5.2).

Chapter 4 asks the encoder to represent p(z | x) through the particles it learns
to follow. Whether it does can be read off without the exact posterior: fit the
Laplace approximation ``N(mode, H^-1)`` of p(z | x) (``eval.nll.laplace_proposal``,
the decoder alone) and compare the first two moments ``(m_q, S_q)`` of
samples of q with it, in the coordinates that whiten H:

- the eigenvalues of ``A = H^1/2 S_q H^1/2``: all 1 when q's covariance is the
  Laplace one; below 1 where q is narrower than the posterior, above 1 where wider;
- ``mahalanobis_sq = (m_q - mode)^T H (m_q - mode)``;
- ``kl_gaussian``: KL(N(m_q, S_q) || N(mode, H^-1)) = (tr A - d - log det A +
  mahalanobis_sq) / 2, the part of KL(q || p(z | x)) that the two moments show;
- ``log_det_precision = log det H``: how sharp the decoder has made the posterior
  (it grows while a model's posteriors shrink);
- ``entropy_deficit`` (when the samples' ``log q`` is known: the VAE's Gaussian, the
  Stein encoder's change of variables): ``H(N(m_q, S_q)) - H(q)`` (the first term
  corrected for the sample covariance's bias, ``gaussian_entropy``), how much less
  entropy q has than a Gaussian of its own moments. 0 for a Gaussian q, large for a
  q that spreads its samples as widely but lies thin along a folded surface. Since
  the cross-entropy with a Gaussian depends on q's first two moments only,
  ``KL(q || N(mode, H^-1)) = kl_gaussian + entropy_deficit`` for the distributions
  (the estimates: ``kl_gaussian`` keeps the plug-in log det of S_q, which adds about
  0.64 nats at D = 50 and 1,000 samples). A change-of-variables log q assumes a map
  one-to-one in the noise; where several xi reach one z it overstates H(q), so the
  deficit shown is then a lower bound.

Used by ``experiments.decoder_nll`` (``--shape_examples``) on the VAE and the
Stein VAE alike.
"""

import jax
import jax.numpy as jnp

from dgm_jax.eval import nll

__all__ = ["SHAPE_METRICS", "ENTROPY_METRIC", "gaussian_mismatch", "gaussian_entropy",
           "shape_mismatch", "batched_shape_mismatch"]

SHAPE_METRICS = ("whitened_var_min", "whitened_var_median", "whitened_var_max",
                 "mahalanobis_sq", "kl_gaussian", "log_det_precision")
ENTROPY_METRIC = "entropy_deficit"  # with the samples' log q
# From q's mean, a full Newton step can overshoot where log p(x, z) is not concave.
NEWTON_STEP_SCALES = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)


def gaussian_mismatch(mean, covariance, mode, precisions, axes):
  """q's moments against ``N(mode, axes diag(1 / precisions) axes^T)``.

  Args:
    mean: [D] m_q.
    covariance: [D, D] S_q (positive semi-definite).
    mode: [D] the Laplace mean.
    precisions: [D] the eigenvalues of H.
    axes: [D, D] its eigenvectors (columns).

  Returns:
    {name: scalar} for the names of ``SHAPE_METRICS``.
  """
  dim = mean.shape[-1]
  whiten = jnp.sqrt(precisions)[:, None] * axes.T  # W with W^T W = H
  whitened = whiten @ covariance @ whiten.T
  # q's covariance is positive semi-definite; rounding can take its smallest eigenvalues
  # below 0, and a q squeezed onto fewer than D dimensions has some at 0 (KL = inf).
  eigenvalues = jnp.maximum(jnp.linalg.eigvalsh(0.5 * (whitened + whitened.T)), 0.0)
  offset = whiten @ (mean - mode)
  mahalanobis_sq = jnp.sum(jnp.square(offset))
  log_det = jnp.sum(jnp.log(eigenvalues))
  return {
      "whitened_var_min": eigenvalues[0],
      "whitened_var_median": jnp.median(eigenvalues),
      "whitened_var_max": eigenvalues[-1],
      "mahalanobis_sq": mahalanobis_sq,
      "kl_gaussian": 0.5 * (jnp.sum(eigenvalues) - dim - log_det + mahalanobis_sq),
      "log_det_precision": jnp.sum(jnp.log(precisions)),
  }


def gaussian_entropy(covariance, num_samples=None):
  """H(N(., S)) = (D log(2 pi e) + log det S) / 2 in nats; -inf for a singular S.

  With ``num_samples`` = n, S is taken as the sample covariance (divisor n - 1) of n
  Gaussian draws and log det S is corrected by its Wishart mean, ``E log det S =
  log det Sigma + D log(2 / (n - 1)) + sum_i psi((n - i) / 2)``, i = 1..D: unbiased
  for log det Sigma (uncorrected, D = 50 and n = 1000 read 0.64 nats low).
  """
  dim = covariance.shape[-1]
  _, log_det = jnp.linalg.slogdet(covariance)
  if num_samples is not None:
    n = num_samples
    log_det = log_det - (dim * jnp.log(2.0 / (n - 1))
                         + jnp.sum(jax.scipy.special.digamma((n - jnp.arange(1, dim + 1)) / 2)))
  return 0.5 * (dim * jnp.log(2 * jnp.pi * jnp.e) + log_det)


def shape_mismatch(log_joint, samples, log_q=None):
  """``gaussian_mismatch`` of q's samples of one example against its Laplace fit.

  Args:
    log_joint: ``z [n, D] -> [n]`` log p(x, z) of the example.
    samples: [S, D] draws from q(z | x), S > D.
    log_q: None, or [S] log q(z | x) of the samples, which adds ``entropy_deficit``
      (q's entropy estimated by their mean of -log q).

  Returns:
    {name: scalar}; the mode search starts from the samples' mean, with 20 Newton
    steps, each the best of ``NEWTON_STEP_SCALES`` times the full step.
  """
  mean = jnp.mean(samples, axis=0)
  covariance = jnp.cov(samples, rowvar=False)
  mode, precisions, axes = nll.laplace_proposal(log_joint, mean, num_newton_steps=20,
                                                step_scales=NEWTON_STEP_SCALES)
  metrics = gaussian_mismatch(mean, covariance, mode, precisions, axes)
  if log_q is not None:
    metrics[ENTROPY_METRIC] = gaussian_entropy(covariance, samples.shape[0]) + jnp.mean(log_q)
  return metrics


def batched_shape_mismatch(log_joint, x, samples, log_q=None):
  """``shape_mismatch`` per example: log_joint ``(x_n [P], z [n, D]) -> [n]``, x [B, P],
  samples [B, S, D], log_q None or [B, S] -> {name: [B]}."""
  if log_q is None:
    return jax.vmap(lambda x_n, s: shape_mismatch(lambda z: log_joint(x_n, z), s))(x, samples)
  return jax.vmap(lambda x_n, s, lq: shape_mismatch(lambda z: log_joint(x_n, z), s, lq))(
      x, samples, log_q)
