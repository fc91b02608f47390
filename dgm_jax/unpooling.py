"""Stochastic unpooling and pooling of section 3.2.3 (equations (3.15)-(3.16)).

Each pooled element ``x[..., i, j, c]`` is unpooled into a ``p x p`` block that
is zero except at one position, chosen by a one-hot pooling map
``z ~ Mult(1, theta)`` (3.15) with ``theta ~ Dir(1 / p^2)`` shared by the blocks
of one feature map (3.16). Maps have ``S = p * p`` slots, or ``S = p * p + 1``
in the modified version of section 3.2.3 whose last slot sets the whole block to
zero. Slot ``s < p * p`` is the in-block position ``(s // p, s % p)``
(row-major). ``pool`` is the inverse (3.44, section 3.4.3) under the same map,
``deterministic_unpool`` is the fixed, most-probable map of section 3.5.6 used
to project dictionary elements to the data plane for (3.49), and ``relaxed_map``
is a Gumbel-softmax map for reparameterized gradients. Outputs are unreduced:
one value per element or per block.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

__all__ = [
    "unpool",
    "pool",
    "expected_unpool",
    "deterministic_unpool",
    "most_probable_slot",
    "sample_map",
    "map_log_prob",
    "map_prior_log_prob",
    "relaxed_map",
]


def unpool(x, map_onehot, pool_size):
  """Unpools `x` into sparse blocks placed by a one-hot pooling map (3.15).

  Args:
    x: [..., H, W, C] pooled activations.
    map_onehot: [..., H, W, C, S] one-hot maps with S = p * p, or
      S = p * p + 1 where the last slot makes the whole block zero. Soft
      maps (probabilities) give the weighted sum of one-hot unpoolings.
    pool_size: int p (static), the side of the square pooling block.

  Returns:
    [..., H * p, W * p, C]: block (i, j) of channel c holds
    `x[..., i, j, c]` at in-block position (s // p, s % p) for the selected
    slot s < p * p and zeros elsewhere; it is all zeros when the last of
    p * p + 1 slots is selected.
  """
  positions = _positions(map_onehot, pool_size)
  blocks = jnp.einsum("...hwc,...hwcij->...hiwjc", x, positions)
  *lead, height, _, width, _, channels = blocks.shape
  return blocks.reshape(*lead, height * pool_size, width * pool_size, channels)


def pool(s, map_onehot, pool_size):
  """Pools `s` by reading the element each block's map selects (3.44).

  Args:
    s: [..., H * p, W * p, C] unpooled activations.
    map_onehot: [..., H, W, C, S] one-hot maps, S = p * p or p * p + 1.
    pool_size: int p (static).

  Returns:
    [..., H, W, C]: the selected element of each block, 0 where the
    all-zero slot is selected, so `pool(unpool(x, m, p), m, p) == x`
    wherever m selects a position.
  """
  *lead, height_p, width_p, channels = s.shape
  blocks = s.reshape(*lead, height_p // pool_size, pool_size,
                     width_p // pool_size, pool_size, channels)
  return jnp.einsum("...hiwjc,...hwcij->...hwc", blocks,
                    _positions(map_onehot, pool_size))


def expected_unpool(x, logits, pool_size):
  """Expectation of `unpool(x, z)` under z ~ Mult(1, softmax(logits)).

  Args:
    x: [..., H, W, C].
    logits: [..., H, W, C, S], S = p * p or p * p + 1.
    pool_size: int p (static).

  Returns:
    [..., H * p, W * p, C].
  """
  return unpool(x, jax.nn.softmax(logits, axis=-1), pool_size)


def deterministic_unpool(x, pool_size, slot=0):
  """Unpools every block with one fixed map, as used for (3.49).

  Section 3.5.6 (the text before (3.49)) replaces the stochastic map by a
  deterministic one when projecting top-layer dictionary elements to the
  data plane: each pooled element goes to one fixed location of its block,
  "the same deterministic unpooling ... for each pooling region at a given
  layer, corresponding to the most-probable of such maps from the training
  data" (see `most_probable_slot`). The default slot 0 is the top-left.

  Args:
    x: [..., H, W, C].
    pool_size: int p (static).
    slot: integer in [0, p * p), the in-block position
      (slot // p, slot % p); may be a traced integer scalar.

  Returns:
    [..., H * p, W * p, C].
  """
  map_onehot = jax.nn.one_hot(slot, pool_size * pool_size, dtype=x.dtype)
  return unpool(x, jnp.broadcast_to(map_onehot, x.shape + map_onehot.shape),
                pool_size)


def most_probable_slot(map_onehot, pool_size):
  """The position slot selected most often by the given maps (for (3.49)).

  Counts are summed over every block, channel and example, since the text
  picks one map per layer. The all-zero slot, if present, is no candidate:
  a deterministic unpooling has to place the value somewhere.

  Args:
    map_onehot: [..., S] one-hot (or soft) maps of one layer,
      S = p * p or p * p + 1.
    pool_size: int p (static).

  Returns:
    Integer scalar in [0, p * p).
  """
  num_positions = pool_size * pool_size
  counts = map_onehot[..., :num_positions].reshape(-1, num_positions).sum(0)
  return jnp.argmax(counts)


def sample_map(key, logits, sample_shape=()):
  """Draws one-hot pooling maps z ~ Mult(1, softmax(logits)) (3.15).

  Args:
    key: PRNG key.
    logits: [..., S] unnormalized log-probabilities of the slots.
    sample_shape: leading shape of independent draws.

  Returns:
    [*sample_shape, ..., S] one-hot maps in the dtype of `logits`.
  """
  shape = tuple(sample_shape) + logits.shape[:-1]
  slots = jax.random.categorical(key, logits, axis=-1, shape=shape)
  return jax.nn.one_hot(slots, logits.shape[-1], dtype=logits.dtype)


def map_log_prob(map_onehot, logits):
  """log Mult(z | 1, softmax(logits)) of given maps, one value per block.

  Args:
    map_onehot: [..., S] one-hot maps (soft maps give the negative
      cross-entropy sum_s z_s log pi_s).
    logits: [..., S], broadcastable against `map_onehot`.

  Returns:
    [...] log-probabilities.
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(jnp.where(map_onehot != 0, map_onehot * log_probs, 0.0),
                 axis=-1)


def map_prior_log_prob(map_onehot, alpha=None):
  """Collapsed Dirichlet-multinomial log-prob of maps sharing one theta.

  Integrates theta ~ Dir(alpha) (3.16) out of prod_n Mult(z_n | 1, theta)
  (3.15) over the blocks n of one feature map:
  log Gamma(A) - log Gamma(A + N) + sum_s [log Gamma(alpha_s + n_s)
  - log Gamma(alpha_s)], with A = sum_s alpha_s and n_s the number of blocks
  selecting slot s. It is the probability of the ordered configuration of
  maps (no multinomial coefficient), so it sums to one over all S^N
  configurations.

  Args:
    map_onehot: [..., N_blocks, S] one-hot maps; the blocks of one feature
      map (flatten its H, W axes into N_blocks).
    alpha: scalar or [S] Dirichlet concentration. None gives the symmetric
      1 / (p * p) of (3.16), with p * p = S, or S - 1 for the variant
      with the all-zero slot (S = p * p + 1 is never a square).

  Returns:
    [...] log-probabilities.
  """
  num_blocks, num_slots = map_onehot.shape[-2:]
  if alpha is None:
    alpha = 1.0 / _num_positions(num_slots)
  alpha = jnp.broadcast_to(jnp.asarray(alpha, map_onehot.dtype), (num_slots,))
  counts = map_onehot.sum(axis=-2)
  return (gammaln(alpha.sum()) - gammaln(alpha.sum() + num_blocks)
          + jnp.sum(gammaln(alpha + counts) - gammaln(alpha), axis=-1))


def relaxed_map(key, logits, temperature, hard=False):
  """Gumbel-softmax (concrete) relaxation of a pooling map.

  Args:
    key: PRNG key.
    logits: [..., S].
    temperature: positive scalar, or an array broadcastable to [..., S];
      the relaxed sample approaches a one-hot map as it goes to 0.
    hard: static bool. If True the forward value is the one-hot argmax of
      the relaxed sample and the gradient is that of the relaxed sample
      (straight-through).

  Returns:
    [..., S] maps on the simplex (one-hot when `hard`).
  """
  gumbel = jax.random.gumbel(key, logits.shape, logits.dtype)
  soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
  if not hard:
    return soft
  onehot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1],
                          dtype=soft.dtype)
  return soft + jax.lax.stop_gradient(onehot - soft)


def _num_positions(num_slots):
  """p * p from S = p * p or S = p * p + 1."""
  root = int(np.sqrt(num_slots))
  if root * root == num_slots:
    return num_slots
  if root * root + 1 == num_slots:
    return num_slots - 1
  raise ValueError(
      f"map_onehot has {num_slots} slots; expected p * p or p * p + 1")


def _positions(map_onehot, pool_size):
  """[..., S] maps -> [..., p, p] in-block positions (all-zero slot dropped)."""
  num_positions = pool_size * pool_size
  if map_onehot.shape[-1] not in (num_positions, num_positions + 1):
    raise ValueError(
        f"map_onehot has {map_onehot.shape[-1]} slots; pool_size "
        f"{pool_size} needs {num_positions} or {num_positions + 1}")
  return map_onehot[..., :num_positions].reshape(
      *map_onehot.shape[:-1], pool_size, pool_size)
