"""Element-wise log-densities used by every model (chapters 3-5).

Each function returns the log-density of every element, unreduced, so that the
model's objective decides what to sum and how to weight it. The discretized
8-bit likelihoods use the bins of section 5.3.1, ``p(x = i | z) = P(x in [i/256,
(i + 1)/256] | z)`` on pixel values scaled to [0, 1], which matches uniform
dequantization ``(255 x + u) / 256``; but the first and last bins are open (to
-inf and +inf), as in Salimans et al. (2017), whom 5.3.1 cites, so the 256
probabilities sum to one. Read literally, 5.3.1's closed edge bins lose the
mass outside [0, 1]: its log-likelihoods are never higher than these (for a
Gaussian of mean 0 and scale 0.01, pixel 0 has 0.15 there and 0.65 here).
``kl_diag_gaussian_std_normal`` is the analytic KL term of the Gaussian VAE (4.1).
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, log_ndtr

__all__ = [
    "bernoulli_log_prob",
    "softplus",
    "gaussian_log_prob",
    "discretized_gaussian_log_prob",
    "discretized_logistic_log_prob",
    "logistic_log_prob",
    "poisson_log_prob",
    "categorical_log_prob",
    "laplace_log_prob",
    "kl_diag_gaussian_std_normal",
    "NUM_BINS",
]

NUM_BINS = 256
_LOG_2PI = math.log(2.0 * math.pi)


@jax.custom_jvp
def softplus(x):
  """``log(1 + e^x)``, stable for any x, with the derivative ``sigmoid(x)`` taken directly.

  ``jax.nn.softplus`` differentiates as ``exp(x - softplus(x))``, so its gradient
  needs the value, a log1p per element; here a gradient needs only the sigmoid,
  and where the value itself goes unused (the SVGD scores of the Stein VAE, whose
  decoder outputs B x M x 784 logits per step) XLA drops its computation.
  """
  return jnp.logaddexp(x, 0.0)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (tangent,) = primals, tangents
  return softplus(x), _sigmoid(x) * tangent


@jax.custom_jvp
def _sigmoid(x):
  """``jax.nn.sigmoid`` whose derivative is ``sigmoid(x) sigmoid(-x)``, accurate in both tails
  (``s (1 - s)`` loses every digit once s rounds to 1), so softplus's second derivative, the
  Bernoulli curvature, is exact to round-off."""
  return jax.nn.sigmoid(x)


@_sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
  (x,), (tangent,) = primals, tangents
  value = _sigmoid(x)
  return value, value * _sigmoid(-x) * tangent


def bernoulli_log_prob(x, logits):
  """log Bernoulli(x | sigmoid(logits)), stable for any logit.

  Its gradient in the logits is ``x - sigmoid(logits)`` (see :func:`softplus`).

  Args:
    x: values in [0, 1] (binary data, or probabilities for a cross-entropy).
    logits: broadcastable to x.

  Returns:
    Element-wise log-probabilities, shape of ``x + logits``.
  """
  return x * logits - softplus(logits)


def gaussian_log_prob(x, mean, log_var):
  """log N(x | mean, exp(log_var)), element-wise.

  The residual is scaled before it is squared, so ``x == mean`` gives 0, not 0 * inf,
  for variances down to exp(-176) in float32 (exp(-88) before).
  """
  return -0.5 * (_LOG_2PI + log_var + jnp.square((x - mean) * jnp.exp(-0.5 * log_var)))


def laplace_log_prob(x, loc, log_scale):
  """log Laplace(x | loc, exp(log_scale)), element-wise (the residual scaled in two halves, so
  ``x == loc`` gives 0 for scales down to exp(-176) in float32, as in :func:`gaussian_log_prob`)."""
  half = jnp.exp(-0.5 * log_scale)
  return -math.log(2.0) - log_scale - jnp.abs((x - loc) * half) * half


def poisson_log_prob(counts, log_rate):
  """log Poisson(counts | exp(log_rate)), element-wise (counts >= 0)."""
  return counts * log_rate - jnp.exp(log_rate) - gammaln(counts + 1.0)


def categorical_log_prob(labels, logits):
  """log Categorical(labels | softmax(logits)).

  Args:
    labels: integer class indices, shape [...].
    logits: [..., C].

  Returns:
    [...] log-probabilities.
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  labels = jnp.asarray(labels, jnp.int32)
  return jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def kl_diag_gaussian_std_normal(mean, log_var):
  """KL(N(mean, exp(log_var)) || N(0, 1)), element-wise (sum over z yourself)."""
  return 0.5 * (jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var)


def logistic_log_prob(x, mean, log_scale):
  """log density of Logistic(mean, exp(log_scale)) at continuous x, element-wise.

  Used on uniformly dequantized 8-bit pixels (5.3.1), where minus ``log 256``
  per pixel makes it a lower bound on the discrete log-probability in
  expectation over the dequantization noise.
  """
  t = (x - mean) * jnp.exp(-log_scale)
  return -t - log_scale - 2.0 * jax.nn.softplus(-t)


def discretized_logistic_log_prob(x, mean, log_scale):
  """log-probability of 8-bit pixels under a discretized logistic (5.3.1).

  Pixel value ``k = round(255 x)`` owns the bin ``[k/256, (k+1)/256)`` of the
  continuous [0, 1] scale on which ``mean`` lives; the first and last bins are
  open (they extend to -inf and +inf), so the 256 probabilities sum to one.

  Args:
    x: pixel values k/255 in [0, 1].
    mean: location on the [0, 1] scale, broadcastable to x.
    log_scale: log of the logistic scale, broadcastable to x.

  Returns:
    Element-wise log-probabilities.
  """
  lower, upper, is_first, is_last = _bin_edges(x)
  inv_scale = jnp.exp(-log_scale)
  a = (upper - mean) * inv_scale
  b = (lower - mean) * inv_scale
  # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), all in logs.
  log_mid = (jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b)
             + _log1mexp(a - b))
  return jnp.where(is_first, jax.nn.log_sigmoid(a),
                   jnp.where(is_last, jax.nn.log_sigmoid(-b), log_mid))


def discretized_gaussian_log_prob(x, mean, log_scale):
  """log-probability of 8-bit pixels under a discretized Gaussian (5.3.1).

  Same bins as :func:`discretized_logistic_log_prob`; ``exp(log_scale)`` is the
  standard deviation.

  Args:
    x: pixel values k/255 in [0, 1].
    mean: [0, 1]-scale mean, broadcastable to x.
    log_scale: log standard deviation, broadcastable to x.

  Returns:
    Element-wise log-probabilities.
  """
  lower, upper, is_first, is_last = _bin_edges(x)
  inv_scale = jnp.exp(-log_scale)
  a = (upper - mean) * inv_scale
  b = (lower - mean) * inv_scale
  # Phi(a) - Phi(b) == Phi(-b) - Phi(-a): use the side away from the upper tail.
  flip = (a + b) > 0
  hi = jnp.where(flip, -b, a)
  lo = jnp.where(flip, -a, b)
  log_mid = log_ndtr(hi) + _log1mexp(log_ndtr(hi) - log_ndtr(lo))
  # A bin over which the density barely changes (width w and w |m| below 1e-3, in
  # standard deviations; m <= 0 here): the difference of log Phi, about w max(1, |m|),
  # cancels (in float32 it is 0 at log_scale 12), so integrate the density by the
  # midpoint rule with its second-order term, w phi(m) (1 + w^2 (m^2 - 1) / 24).
  width, mid = hi - lo, 0.5 * (hi + lo)
  narrow = width * jnp.maximum(1.0, -mid) < _NARROW_BIN
  w = jnp.where(narrow, width, _NARROW_BIN)
  mid = jnp.where(narrow, mid, 0.0)
  log_narrow = (jnp.log(w) - 0.5 * mid**2 - 0.5 * math.log(2.0 * math.pi)
                + jnp.log1p(w**2 * (mid**2 - 1.0) / 24.0))
  log_mid = jnp.where(narrow, log_narrow, log_mid)
  return jnp.where(is_first, log_ndtr(a),
                   jnp.where(is_last, log_ndtr(-b), log_mid))


_NARROW_BIN = 1e-3  # below it (bin width in standard deviations) the midpoint rule is used


def _bin_edges(x):
  k = jnp.clip(jnp.round(x * (NUM_BINS - 1)), 0, NUM_BINS - 1)
  lower = k / NUM_BINS
  upper = (k + 1.0) / NUM_BINS
  return lower, upper, k == 0, k == NUM_BINS - 1


def _log1mexp(d):
  """log(1 - exp(-d)) for d > 0, accurate at both ends (Maechler 2012).

  Each branch sees only the inputs it is chosen for (the other's are clamped to
  log 2): ``jnp.where`` differentiates both, and ``log1p(-exp(-d))`` at a d so small
  that exp(-d) rounds to 1 is -inf, whose gradient would turn the chosen one into NaN
  (a very wide pixel distribution, bin widths / scale below float32's epsilon).
  """
  d = jnp.maximum(d, jnp.finfo(jnp.result_type(d, jnp.float32)).tiny)
  ln2 = math.log(2.0)
  return jnp.where(d < ln2, jnp.log(-jnp.expm1(-jnp.minimum(d, ln2))),
                   jnp.log1p(-jnp.exp(-jnp.maximum(d, ln2))))
