"""Variational and importance-weighted bounds (sections 4.1 and 4.3).

``elbo`` is the evidence lower bound of (4.1) from per-sample log-joints and
log-densities of the encoder; ``iwae_bound`` is the importance-weighted bound
L_k of (4.14), a log-mean-exp over the sample axis; ``normalized_weights`` are
the self-normalized importance weights used by the Stein VIWAE (4.40), (4.43);
``importance_weighted_kl`` estimates the multi-sample importance-weighted KL
divergence of (4.15). All are computed in log space with logsumexp.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

__all__ = [
    "log_weights",
    "elbo",
    "iwae_bound",
    "normalized_weights",
    "effective_sample_size",
    "importance_weighted_kl",
]


def log_weights(log_joint, log_q):
  """Importance log-weights ``log p(x, z) - log q(z | x)``, element-wise."""
  return log_joint - log_q


def elbo(log_joint, log_q, axis=0):
  """Monte-Carlo ELBO: the mean over ``axis`` of ``log p(x, z) - log q(z|x)``.

  Args:
    log_joint: [..., K, ...] log p(x, z_i) for K samples z_i ~ q(z|x).
    log_q: same shape, log q(z_i | x).
    axis: the sample axis.

  Returns:
    The per-example ELBO estimate, ``axis`` removed.
  """
  return jnp.mean(log_joint - log_q, axis=axis)


def iwae_bound(log_weights, axis=0):
  """Importance-weighted bound L_k = log (1/k) sum_i w_i  (4.14).

  Args:
    log_weights: [..., k, ...] log p(x, z_i) - log q(z_i | x).
    axis: the sample axis (of length k).

  Returns:
    L_k per example, ``axis`` removed. Equals the ELBO for k = 1.
  """
  num_samples = log_weights.shape[axis]
  return logsumexp(log_weights, axis=axis) - math.log(num_samples)


def normalized_weights(log_weights, axis=0):
  """Self-normalized importance weights ``w_i / sum_j w_j`` (softmax of logs); NaN where
  every log-weight is -inf (nothing to normalize), which the loop's non-finite guard stops on."""
  return jax.nn.softmax(log_weights, axis=axis)


def effective_sample_size(log_weights, axis=0):
  """Kish's effective sample size ``1 / sum_i wbar_i^2`` of normalized weights."""
  log_w = jax.nn.log_softmax(log_weights, axis=axis)
  return jnp.exp(-logsumexp(2.0 * log_w, axis=axis))


def importance_weighted_kl(log_target, log_q, axis=0, log_normalizer=0.0):
  """Estimate of the multi-sample importance-weighted KL of (4.15).

  ``KL^k = -E[log (1/k) sum_i p(Theta_i | D) / q(Theta_i)]``. With an
  unnormalized target ``p~(Theta) = p(Theta | D) Z`` pass ``log Z`` (when known)
  as ``log_normalizer``; otherwise the estimate is shifted by ``-log Z``.

  Args:
    log_target: [..., k, ...] log p~(Theta_i), Theta_i ~ q independently.
    log_q: same shape, log q(Theta_i).
    axis: the sample axis.
    log_normalizer: log Z of the target, broadcastable to the result.

  Returns:
    One draw of the estimator per example; its mean over draws is KL^k, which
    is >= 0 and does not increase with k (Theorem 2).
  """
  return log_normalizer - iwae_bound(log_target - log_q, axis=axis)
