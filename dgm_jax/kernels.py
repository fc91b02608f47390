"""The RBF kernel of Stein variational gradient descent and its bandwidth (4.2).

SVGD (section 4.2, eqs. (4.10)-(4.12)) moves particles with the RBF kernel
``k(x, y) = exp(-|x - y|^2 / h)``. The bandwidth ``h`` follows the median
heuristic; three conventions are offered because the literature uses all of
them (see :func:`median_bandwidth`). Medians are found by bisection on the
value range rather than by sorting, which is slow on XLA:CPU.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "pairwise_sq_dists",
    "rbf_kernel",
    "median_bandwidth",
    "fast_median",
    "order_statistics",
    "BANDWIDTH_CONVENTIONS",
]

BANDWIDTH_CONVENTIONS = ("liu_wang", "paper", "median")


def pairwise_sq_dists(x, y):
  """Squared Euclidean distances in Gram form, clipped at 0.

  Args:
    x: [N, D].
    y: [M, D].

  Returns:
    [N, M] with entries ``|x_n - y_m|^2``.
  """
  x_sq = jnp.sum(jnp.square(x), axis=-1)
  y_sq = jnp.sum(jnp.square(y), axis=-1)
  cross = x @ y.T
  return jnp.maximum(x_sq[:, None] + y_sq[None, :] - 2.0 * cross, 0.0)


def rbf_kernel(x, y, bandwidth):
  """RBF kernel matrix ``k(x_n, y_m) = exp(-|x_n - y_m|^2 / bandwidth)``.

  Args:
    x: [N, D].
    y: [M, D].
    bandwidth: positive scalar h.

  Returns:
    [N, M] kernel values.
  """
  return jnp.exp(-pairwise_sq_dists(x, y) / bandwidth)


def median_bandwidth(x, convention="liu_wang"):
  """Median-heuristic bandwidth ``h`` for ``k = exp(-d^2 / h)`` on particles x.

  Conventions (M particles):
    * ``"liu_wang"``: median of all M*M squared distances (diagonal zeros
      included) over ``log(M + 1)``, as in the SVGD authors' code.
    * ``"paper"``: the squared median of the off-diagonal distances over
      ``log M`` (Liu and Wang 2016, text).
    * ``"median"``: the median of the off-diagonal squared distances itself.

  The result is finite and positive for one particle or identical particles
  (it falls back to 1, where every kernel value is 1 anyway).

  Args:
    x: [M, D] particles.
    convention: one of ``BANDWIDTH_CONVENTIONS``.

  Returns:
    Scalar bandwidth (gradients are stopped: h is a heuristic, not a parameter).
  """
  if convention not in BANDWIDTH_CONVENTIONS:
    raise ValueError(f"Unknown bandwidth convention {convention!r}; expected one "
                     f"of {BANDWIDTH_CONVENTIONS}.")
  # Centred first (no distance changes): the Gram form |x|^2 + |y|^2 - 2 x.y cancels for a
  # tight set far from the origin (float32: spread 0.05 at 300 per coordinate is all noise).
  x = jax.lax.stop_gradient(x)
  x = x - jnp.mean(x, axis=0)
  num_particles = x.shape[0]
  # Each distance once: the strict upper triangle. The off-diagonal entries are that
  # list twice over, which has the same median; the full matrix adds M zeros.
  pairs = pairwise_sq_dists(x, x)[np.triu_indices(num_particles, 1)]
  if convention == "liu_wang":
    h = _median_of_zeros_and_pairs(pairs, num_particles) / math.log(num_particles + 1.0)
  elif num_particles < 2:
    h = jnp.zeros((), x.dtype)
  elif convention == "paper":
    h = jnp.square(fast_median(jnp.sqrt(pairs))) / math.log(num_particles)
  else:
    h = fast_median(pairs)
  return jnp.where(h > 0, h, jnp.ones_like(h))


def _median_of_zeros_and_pairs(pairs, num_zeros):
  """Median of ``num_zeros`` zeros and every entry of the non-negative ``pairs`` twice.

  That multiset is the M x M matrix of squared distances (zero diagonal, each
  off-diagonal distance twice), so its median comes from the M (M - 1) / 2 distinct
  distances: half the counting work of the whole matrix.
  """
  total = num_zeros + 2 * pairs.shape[0]
  # The 1-based ranks of the middle elements, as ranks among the pairs: rank r of the
  # whole is a zero for r <= num_zeros, else the ceil((r - num_zeros) / 2)-th smallest pair.
  low, high = ((rank - num_zeros + 1) // 2 for rank in ((total + 1) // 2, total // 2 + 1))
  if high <= 0:  # one particle: all zeros
    return jnp.zeros((), pairs.dtype)
  if low <= 0:  # two particles: a zero and the one pair
    return 0.5 * order_statistics(pairs, high)[0]
  lower, upper = order_statistics(pairs, low, with_next=high > low)
  return lower if upper is None else 0.5 * (lower + upper)


def fast_median(values):
  """Median of a 1-D array by bisection on the values' bit patterns (no sort).

  Floats map to integers in an order-preserving way (IEEE 754 bit patterns,
  negative numbers' magnitude bits flipped), so bisection on that integer
  range pins the k-th order statistic exactly in as many counting passes
  (O(n) each) as the float has bits: 32 for float32, 64 for float64. Even
  lengths average the two middle order statistics, as ``numpy.median``.

  Args:
    values: [n].

  Returns:
    Scalar median.
  """
  n = values.shape[0]
  lower, upper = order_statistics(values, (n - 1) // 2 + 1, with_next=n % 2 == 0)
  return lower if n % 2 == 1 else 0.5 * (lower + upper)


def order_statistics(values, rank, with_next=False):
  """The ``rank``-th smallest of 1-D ``values`` (1-based, static), and optionally the next.

  By bisection on the values' order-preserving integer keys (no sort; see
  :func:`fast_median`): exact, in as many counting passes as the float has bits.

  Args:
    values: [n].
    rank: 1 <= rank <= n.
    with_next: also return the (rank + 1)-th smallest (needs rank < n).

  Returns:
    (rank-th value, (rank + 1)-th value or None).
  """
  keys = _sortable_keys(values)
  kth = _kth_smallest_key(keys, rank)
  # Read values by gather, never through a float reduction: XLA:CPU flushes subnormals there.
  kth_value = values[jnp.argmax(keys == kth)]
  if not with_next:
    return kth_value, None
  above = jnp.min(jnp.where(keys > kth, keys, jnp.iinfo(keys.dtype).max))
  next_key = jnp.where(jnp.sum(keys <= kth) >= rank + 1, kth, above)
  return kth_value, values[jnp.argmax(keys == next_key)]


def _sortable_keys(values):
  """Integers ordered as the floats ``values`` are (-0.0 sorts just below +0.0)."""
  int_dtype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[values.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(values, int_dtype)
  return jnp.where(bits < 0, bits ^ jnp.iinfo(int_dtype).max, bits)


def _kth_smallest_key(keys, rank):
  """The ``rank``-th smallest (1-based) of integer ``keys``, by bisection on their range."""
  def body(_, bracket):
    lo, hi = bracket
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
    enough = jnp.sum(keys <= mid) >= rank
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  # Invariant: count(keys <= hi) >= rank > count(keys < lo); each pass halves hi - lo.
  num_bits = 8 * keys.dtype.itemsize
  _, hi = jax.lax.fori_loop(0, num_bits, body, (jnp.min(keys), jnp.max(keys)))
  return hi
