"""Importance-sampled log-likelihoods and bits per dimension (sections 4.5.2, 5.3).

The test NLL of every method is ``-log (1/K) sum_k p(x, z_k) / q(z_k | x)``
with K = 5000 samples (Burda et al. 2016). The samples are drawn in chunks
inside one ``lax.scan`` that keeps a running logsumexp, so memory stays bounded
by one chunk whatever K is.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

__all__ = ["importance_log_likelihood", "bits_per_dim", "chunk_size_for"]


def importance_log_likelihood(log_weight_fn, key, num_samples, chunk_size):
  """log-mean-exp of importance weights over ``num_samples`` draws, in chunks.

  Args:
    log_weight_fn: ``(key, n) -> [n, B]`` log p(x, z) - log q(z | x) for n
      fresh samples per example.
    key: PRNG key.
    num_samples: K, a multiple of ``chunk_size``.
    chunk_size: samples drawn at once.

  Returns:
    [B] estimates of log p(x) (the bound L_K of (4.14)).
  """
  if num_samples % chunk_size:
    raise ValueError(f"num_samples={num_samples} must be a multiple of chunk_size={chunk_size}")

  def body(running, chunk_key):
    log_w = log_weight_fn(chunk_key, chunk_size)
    return jnp.logaddexp(running, logsumexp(log_w, axis=0)), None

  batch_shape = jax.eval_shape(lambda k: log_weight_fn(k, chunk_size), key).shape[1:]
  init = jnp.full(batch_shape, -jnp.inf)
  total, _ = jax.lax.scan(body, init, jax.random.split(key, num_samples // chunk_size))
  return total - math.log(num_samples)


def chunk_size_for(num_samples, max_chunk):
  """The largest divisor of ``num_samples`` that is at most ``max_chunk``."""
  for size in range(min(num_samples, max_chunk), 0, -1):
    if num_samples % size == 0:
      return size
  return 1


def bits_per_dim(nll_nats, num_dims):
  """Converts a per-example NLL in nats of 8-bit data in [0, 1] units to bits/dim.

  With the discretized likelihoods of ``dgm_jax.likelihoods`` the NLL is already
  that of the 8-bit values, so only the change of log base and the division by
  the number of dimensions remain.
  """
  return nll_nats / (num_dims * math.log(2.0))
