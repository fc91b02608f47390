"""Importance-sampled log-likelihoods and bits per dimension (sections 4.5.2, 5.3).

The test NLL of every method is ``-log (1/K) sum_k p(x, z_k) / q(z_k | x)``
with K = 5000 samples (Burda et al. 2016). The samples are drawn in chunks
inside one ``lax.scan`` that keeps a running logsumexp, so memory stays bounded
by one chunk whatever K is.

Any proposal gives a stochastic lower bound on log p(x); the method's own
encoder is the one the dissertation uses. ``laplace_log_likelihood`` swaps it
for a Gaussian at a mode of ``log p(x, z)`` with the negative Hessian as its
precision, which needs only the decoder: it separates "the decoder assigns the
data low likelihood" from "the encoder is a poor proposal" (a narrow Stein
encoder, section 4.5.2). It is exact, with zero variance, when the posterior is
Gaussian.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.scipy.special import logsumexp

__all__ = ["importance_log_likelihood", "bits_per_dim", "chunk_size_for", "laplace_proposal",
           "laplace_log_likelihood", "batched_laplace_log_likelihood", "paired_difference"]


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
  """The largest divisor of ``num_samples`` that is at most ``max_chunk``.

  A K with no divisor near ``max_chunk`` (a prime: 101 in chunks of 1) draws in many
  small sequential chunks; that is logged as a warning naming a faster K.
  """
  ceiling = min(num_samples, max_chunk)
  size = next(s for s in range(ceiling, 0, -1) if num_samples % s == 0)
  if 4 * size < ceiling:
    faster = num_samples - num_samples % ceiling
    logging.warning("K=%d importance samples draw in %d chunks of %d (eval.max_chunk=%d): K has "
                    "no divisor near max_chunk; K=%d would take %d chunks", num_samples,
                    num_samples // size, size, max_chunk, faster, faster // ceiling)
  return size


def bits_per_dim(nll_nats, num_dims):
  """Converts a per-example NLL in nats of 8-bit data in [0, 1] units to bits/dim.

  With the discretized likelihoods of ``dgm_jax.likelihoods`` the NLL is already
  that of the 8-bit values, so only the change of log base and the division by
  the number of dimensions remain.
  """
  return nll_nats / (num_dims * math.log(2.0))


def standard_error(values):
  """Standard error of a mean over images, std(values, ddof=1) / sqrt(N) (0 for a single image)."""
  values = np.asarray(values, np.float64)
  return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def paired_difference(nll, reference_nll):
  """Mean per-image NLL difference of two models on the same images, with its standard error.

  Two models' NLLs on a test set differ by a few tenths of a nat while each image's
  NLL varies by tens of nats, so the standard error of a difference of two means is
  wider than the difference. The images' difficulty is shared, though: the per-image
  differences vary far less, and the standard error of their mean is smaller by an
  order of magnitude (a paired comparison, as in a paired t-test; the README gives
  MNIST's figures).

  Args:
    nll: [N] per-image NLLs of one model.
    reference_nll: [N] per-image NLLs of the reference on the same images, in order.

  Returns:
    dict: ``num_examples`` N, ``nll_difference_nats`` = mean(nll - reference_nll)
    (negative where the model is better) and ``standard_error_nats`` =
    std(differences, ddof=1) / sqrt(N).

  Raises:
    ValueError: the arrays differ in shape, are not 1-D or hold fewer than 2 images.
  """
  nll, reference_nll = np.asarray(nll, np.float64), np.asarray(reference_nll, np.float64)
  if nll.shape != reference_nll.shape or nll.ndim != 1 or nll.shape[0] < 2:
    raise ValueError(f"paired NLLs need two 1-D arrays of the same length, at least 2; got "
                     f"shapes {nll.shape} and {reference_nll.shape}")
  differences = nll - reference_nll
  return {"num_examples": int(differences.shape[0]),
          "nll_difference_nats": float(np.mean(differences)),
          "standard_error_nats": standard_error(differences)}


def laplace_proposal(log_joint, z_init, num_newton_steps=8, min_precision=1e-2,
                     step_scales=(1.0,)):
  """A Gaussian at a mode of ``log_joint`` with the negative Hessian as precision.

  Newton steps on the precision with its eigenvalues floored at ``min_precision``
  (so a saddle or a flat direction gives a wide, finite proposal); of the steps
  scaled by ``step_scales`` the best is kept, and only where it raises
  ``log_joint``, so the iterate never gets worse. The default (the full step
  alone) is what the NLL figures use; a start far from the mode, in a
  non-concave region, needs shorter steps too.

  Args:
    log_joint: ``z [n, D] -> [n]`` log p(x, z) of one example at n codes (called
      with n = 1 and n = len(step_scales) here, so a decoder that needs a batch
      axis works as it is).
    z_init: [D] start, e.g. the encoder's code of x.
    num_newton_steps: a static int.
    min_precision: floor of the precision's eigenvalues.
    step_scales: static tuple of the Newton step's multiples to try.

  Returns:
    ``(mode [D], precisions [D], axes [D, D])``: the proposal is
    ``N(mode, axes diag(1 / precisions) axes^T)``.
  """
  def single(z):
    return log_joint(z[None])[0]

  def precision_at(z):
    hessian = jax.hessian(single)(z)
    values, axes = jnp.linalg.eigh(-0.5 * (hessian + hessian.T))
    return jnp.maximum(values, min_precision), axes

  def newton(z, _):
    precisions, axes = precision_at(z)
    step = axes @ ((axes.T @ jax.grad(single)(z)) / precisions)
    candidates = z + jnp.asarray(step_scales, z.dtype)[:, None] * step
    values = log_joint(candidates)
    best = jnp.argmax(jnp.where(jnp.isnan(values), -jnp.inf, values))
    better = values[best] > single(z)  # False for a NaN candidate too
    return jnp.where(better, candidates[best], z), None

  mode, _ = jax.lax.scan(newton, z_init, None, length=num_newton_steps)
  return (mode, *precision_at(mode))


def laplace_log_likelihood(log_joint, z_init, key, num_samples, chunk_size, **proposal_kwargs):
  """log p(x) of one example, importance sampled from ``laplace_proposal``.

  Args:
    log_joint: ``z [n, D] -> [n]`` log p(x, z) of one example at n codes.
    z_init: [D] start of the mode search.
    key: PRNG key.
    num_samples: K, a multiple of ``chunk_size``.
    chunk_size: samples drawn at once.
    **proposal_kwargs: passed to ``laplace_proposal``.

  Returns:
    Scalar estimate of log p(x), a stochastic lower bound like (4.14).
  """
  mode, precisions, axes = laplace_proposal(log_joint, z_init, **proposal_kwargs)
  dim = mode.shape[-1]
  log_norm = 0.5 * jnp.sum(jnp.log(precisions)) - 0.5 * dim * math.log(2 * math.pi)

  def log_weights(chunk_key, n):
    eps = jax.random.normal(chunk_key, (n, dim), mode.dtype)
    z = mode + (eps / jnp.sqrt(precisions)) @ axes.T
    log_r = log_norm - 0.5 * jnp.sum(jnp.square(eps), axis=-1)
    return (log_joint(z) - log_r)[:, None]

  return importance_log_likelihood(log_weights, key, num_samples, chunk_size)[0]


def batched_laplace_log_likelihood(log_joint, x, z_init, key, num_samples, max_chunk):
  """``laplace_log_likelihood`` for each example of a batch.

  Args:
    log_joint: ``(x_n [P], z [n, D]) -> [n]`` log p(x_n, z) under the model.
    x: [B, P] the examples.
    z_init: [B, D] starts of the mode searches (e.g. the encoder's codes).
    key: PRNG key.
    num_samples: K per example.
    max_chunk: the most samples per example drawn at once.

  Returns:
    [B] estimates of log p(x_n).
  """
  chunk = chunk_size_for(num_samples, max_chunk)

  def one(x_n, z_n, key_n):
    return laplace_log_likelihood(lambda z: log_joint(x_n, z), z_n, key_n, num_samples, chunk)

  return jax.vmap(one)(x, z_init, jax.random.split(key, x.shape[0]))
