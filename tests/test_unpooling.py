"""Property tests of dgm_jax.unpooling against independent numpy truths."""

import itertools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from dgm_jax import unpooling

# (batch, height, width, channels, pool_size): each shape compiles once.
SHAPES = [(2, 3, 2, 2, 2), (1, 2, 3, 1, 3)]
FLOATS = st.floats(-10.0, 10.0, allow_nan=False, allow_subnormal=False)


@st.composite
def unpool_cases(draw):
  """x [B, H, W, C], slots [B, H, W, C], pool_size, num_slots."""
  *x_shape, pool_size = draw(st.sampled_from(SHAPES))
  num_slots = pool_size * pool_size + draw(st.sampled_from([0, 1]))
  x = draw(hnp.arrays(np.float64, x_shape, elements=FLOATS))
  slots = draw(hnp.arrays(np.int64, x_shape,
                          elements=st.integers(0, num_slots - 1)))
  return x, slots, pool_size, num_slots


def unpool_reference(x, slots, pool_size):
  """Direct loop: block (i, j) gets x at (s // p, s % p) unless s == p * p."""
  batch, height, width, channels = x.shape
  out = np.zeros((batch, height * pool_size, width * pool_size, channels))
  for b, i, j, c in np.ndindex(*x.shape):
    slot = slots[b, i, j, c]
    if slot < pool_size * pool_size:
      row, col = divmod(slot, pool_size)
      out[b, i * pool_size + row, j * pool_size + col, c] = x[b, i, j, c]
  return out


def blocks_of(s, pool_size):
  """[B, H*p, W*p, C] -> [B, H, W, C, p*p] numpy view of the blocks."""
  batch, height_p, width_p, channels = s.shape
  blocks = s.reshape(batch, height_p // pool_size, pool_size,
                     width_p // pool_size, pool_size, channels)
  return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(
      batch, height_p // pool_size, width_p // pool_size, channels, -1)


def one_hot(slots, num_slots):
  return np.eye(num_slots)[slots]


class TestUnpool:

  @hypothesis.given(unpool_cases())
  def test_matches_loop_reference(self, case):
    x, slots, pool_size, num_slots = case
    out = unpooling.unpool(x, one_hot(slots, num_slots), pool_size)
    np.testing.assert_array_equal(out, unpool_reference(x, slots, pool_size))

  @hypothesis.given(unpool_cases())
  def test_one_nonzero_per_block(self, case):
    x, slots, pool_size, num_slots = case
    x = np.where(x == 0.0, 1.0, x)
    out = unpooling.unpool(x, one_hot(slots, num_slots), pool_size)
    nonzeros = (blocks_of(np.asarray(out), pool_size) != 0).sum(-1)
    zero_slot = slots == pool_size * pool_size
    np.testing.assert_array_equal(nonzeros, np.where(zero_slot, 0, 1))

  @hypothesis.given(unpool_cases())
  def test_pool_inverts_unpool(self, case):
    x, slots, pool_size, num_slots = case
    maps = one_hot(slots, num_slots)
    pooled = unpooling.pool(unpooling.unpool(x, maps, pool_size), maps,
                            pool_size)
    expected = np.where(slots == pool_size * pool_size, 0.0, x)
    np.testing.assert_array_equal(pooled, expected)

  @hypothesis.given(unpool_cases())
  def test_jit_equals_eager(self, case):
    x, slots, pool_size, num_slots = case
    maps = one_hot(slots, num_slots)
    unpool_jit = jax.jit(unpooling.unpool, static_argnums=2)
    pool_jit = jax.jit(unpooling.pool, static_argnums=2)
    out = unpooling.unpool(x, maps, pool_size)
    np.testing.assert_array_equal(unpool_jit(x, maps, pool_size), out)
    np.testing.assert_array_equal(pool_jit(out, maps, pool_size),
                                  unpooling.pool(out, maps, pool_size))

  def test_vmap_over_batch(self):
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 2))
    maps = one_hot(np.random.default_rng(1).integers(0, 5, (3, 2, 2, 2)), 5)
    vmapped = jax.vmap(lambda a, m: unpooling.unpool(a, m, 2))(x, maps)
    np.testing.assert_array_equal(vmapped, unpooling.unpool(x, maps, 2))

  def test_rejects_wrong_number_of_slots(self):
    with pytest.raises(ValueError, match="slots"):
      unpooling.unpool(jnp.ones((1, 2, 2, 1)), jnp.ones((1, 2, 2, 1, 6)), 2)


class TestExpectedUnpool:

  @hypothesis.given(unpool_cases(), st.integers(0, 2**31 - 1))
  def test_is_probability_weighted_sum(self, case, seed):
    x, _, pool_size, num_slots = case
    logits = np.random.default_rng(seed).normal(size=x.shape + (num_slots,))
    probs = scipy.special.softmax(logits, axis=-1)
    batch, height, width, channels = x.shape
    expected = np.zeros(
        (batch, height * pool_size, width * pool_size, channels))
    for s in range(num_slots):
      slots = np.full(x.shape, s)
      weight = np.repeat(np.repeat(probs[..., s], pool_size, 1), pool_size, 2)
      expected += weight * unpool_reference(x, slots, pool_size)
    np.testing.assert_allclose(
        unpooling.expected_unpool(x, logits, pool_size), expected,
        rtol=1e-12, atol=1e-12)


class TestDeterministicUnpool:

  @hypothesis.given(unpool_cases(), st.data())
  def test_places_every_value_at_the_slot(self, case, data):
    x, _, pool_size, _ = case
    slot = data.draw(st.integers(0, pool_size * pool_size - 1))
    out = unpooling.deterministic_unpool(x, pool_size, slot)
    np.testing.assert_array_equal(
        out, unpool_reference(x, np.full(x.shape, slot), pool_size))
    jitted = jax.jit(unpooling.deterministic_unpool, static_argnums=1)
    np.testing.assert_array_equal(jitted(x, pool_size, slot), out)

  @hypothesis.given(unpool_cases())
  def test_most_probable_slot_is_mode_of_positions(self, case):
    _, slots, pool_size, num_slots = case
    counts = np.bincount(slots.ravel(), minlength=num_slots)
    mode = np.argmax(counts[:pool_size * pool_size])
    assert unpooling.most_probable_slot(one_hot(slots, num_slots),
                                        pool_size) == mode

  def test_most_probable_slot_skips_a_more_frequent_all_zero_slot(self):
    """Maps of pool 2 with the all-zero slot (index 4) chosen in most blocks: the answer is
    numpy's mode over the four position slots alone (slot 2), inside [0, 4)."""
    slots = np.array([[4, 4, 4, 4, 4, 4, 2, 2, 2, 1],
                      [4, 4, 4, 4, 4, 0, 2, 2, 3, 1]]).reshape(2, 5, 2, 1)
    counts = np.bincount(slots.ravel(), minlength=5)
    assert counts.argmax() == 4
    got = unpooling.most_probable_slot(one_hot(slots, 5), 2)
    assert int(got) == np.argmax(counts[:4]) == 2


class TestSampleMap:

  def test_frequencies_follow_probabilities(self):
    logits = np.array([[0.5, -1.0, 2.0, 0.0, -3.0],
                       [1.0, 1.0, 1.0, 1.0, 1.0],
                       [-2.0, 0.3, 0.1, 1.5, -0.5]])
    num_draws = 20000
    maps = unpooling.sample_map(jax.random.key(0), jnp.asarray(logits),
                                sample_shape=(num_draws,))
    assert maps.shape == (num_draws,) + logits.shape
    np.testing.assert_array_equal(maps.sum(-1), 1.0)
    counts = np.asarray(maps.sum(0))
    probs = scipy.special.softmax(logits, axis=-1)
    for row_counts, row_probs in zip(counts, probs):
      result = scipy.stats.chisquare(row_counts, num_draws * row_probs)
      assert result.pvalue > 1e-3, result

  def test_jit_equals_eager(self):
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)))
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        jax.jit(unpooling.sample_map, static_argnums=2)(key, logits, (4,)),
        unpooling.sample_map(key, logits, (4,)))


class TestMapLogProb:

  @hypothesis.given(unpool_cases(), st.integers(0, 2**31 - 1))
  def test_matches_numpy(self, case, seed):
    _, slots, _, num_slots = case
    logits = 3.0 * np.random.default_rng(seed).normal(
        size=slots.shape + (num_slots,))
    log_probs = logits - scipy.special.logsumexp(logits, -1, keepdims=True)
    expected = np.take_along_axis(log_probs, slots[..., None], -1)[..., 0]
    maps = one_hot(slots, num_slots)
    np.testing.assert_allclose(unpooling.map_log_prob(maps, logits),
                               expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        jax.jit(unpooling.map_log_prob)(maps, logits), expected,
        rtol=1e-12, atol=1e-12)


def all_configurations(num_blocks, num_slots):
  """[S^N, N, S] one-hot maps of every configuration of N blocks."""
  slots = np.array(list(itertools.product(range(num_slots), repeat=num_blocks)))
  return one_hot(slots, num_slots), slots


def polya_urn_probability(slots, alpha):
  """Sequential predictive product of the Dirichlet-multinomial (a loop)."""
  counts = np.zeros_like(alpha)
  prob = 1.0
  for slot in slots:
    prob *= (alpha[slot] + counts[slot]) / (alpha.sum() + counts.sum())
    counts[slot] += 1
  return prob


class TestMapPriorLogProb:

  @pytest.mark.parametrize("num_slots", [4, 5])
  def test_default_sums_to_one(self, num_slots):
    maps, _ = all_configurations(3, num_slots)
    total = np.exp(unpooling.map_prior_log_prob(maps)).sum()
    assert abs(total - 1.0) < 1e-10

  @hypothesis.given(st.sampled_from([4, 5]), st.data())
  def test_matches_polya_urn_and_sums_to_one(self, num_slots, data):
    alpha = data.draw(hnp.arrays(np.float64, (num_slots,),
                                 elements=st.floats(0.05, 5.0)))
    maps, slots = all_configurations(3, num_slots)
    log_prob = np.asarray(unpooling.map_prior_log_prob(maps, alpha))
    assert abs(np.exp(log_prob).sum() - 1.0) < 1e-10
    expected = [polya_urn_probability(row, alpha) for row in slots]
    np.testing.assert_allclose(np.exp(log_prob), expected, rtol=1e-10)

  def test_default_alpha_is_one_over_p_squared(self):
    maps, _ = all_configurations(2, 5)
    np.testing.assert_allclose(
        unpooling.map_prior_log_prob(maps),
        unpooling.map_prior_log_prob(maps, 0.25), rtol=1e-14)
    maps, _ = all_configurations(2, 4)
    np.testing.assert_allclose(
        unpooling.map_prior_log_prob(maps),
        unpooling.map_prior_log_prob(maps, 0.25), rtol=1e-14)

  def test_leading_axes_and_jit(self):
    maps, _ = all_configurations(3, 4)
    stacked = maps.reshape(8, 8, 3, 4)
    out = unpooling.map_prior_log_prob(stacked, 0.7)
    assert out.shape == (8, 8)
    np.testing.assert_allclose(
        out, unpooling.map_prior_log_prob(maps, 0.7).reshape(8, 8),
        rtol=1e-14)
    np.testing.assert_allclose(
        jax.jit(unpooling.map_prior_log_prob)(stacked, 0.7), out, rtol=1e-14)


@jax.jit
def relaxed_gradients(key, logits, temperature, weights):
  """Gradients of a linear and a quadratic objective of hard and soft maps."""

  def linear(logits, hard):
    maps = unpooling.relaxed_map(key, logits, temperature, hard=hard)
    return jnp.sum(weights * maps)

  def quadratic(logits, hard):
    maps = unpooling.relaxed_map(key, logits, temperature, hard=hard)
    return jnp.sum(weights * maps**2)

  # Straight-through: the soft Jacobian applied to the quadratic objective's
  # gradient evaluated at the hard (forward) value.
  hard = unpooling.relaxed_map(key, logits, temperature, hard=True)
  straight_through = jax.grad(lambda l: jnp.sum(
      2.0 * weights * jax.lax.stop_gradient(hard)
      * unpooling.relaxed_map(key, l, temperature)))(logits)
  return (jax.grad(linear)(logits, True), jax.grad(linear)(logits, False),
          jax.grad(quadratic)(logits, True), straight_through)


class TestRelaxedMap:

  @hypothesis.given(
      hnp.arrays(np.float64, (3, 5), elements=st.floats(-5.0, 5.0)),
      st.floats(0.1, 3.0), st.integers(0, 2**31 - 1))
  def test_simplex_hard_and_straight_through(self, logits, temperature, seed):
    key = jax.random.key(seed)
    soft = unpooling.relaxed_map(key, logits, temperature)
    hard = unpooling.relaxed_map(key, logits, temperature, hard=True)
    assert np.all(np.asarray(soft) >= 0)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        hard, one_hot(np.argmax(np.asarray(soft), -1), 5), atol=1e-15)

    weights = np.random.default_rng(seed).normal(size=(3, 5))
    linear_hard, linear_soft, quadratic_hard, straight_through = (
        relaxed_gradients(key, logits, temperature, weights))
    np.testing.assert_allclose(linear_hard, linear_soft, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(quadratic_hard, straight_through, rtol=1e-12,
                               atol=1e-12)

  def test_argmax_follows_the_softmax_and_two_slots_are_logistic(self):
    """The Gumbel-max property: argmax of a relaxed map is a draw of softmax(logits) at any
    temperature (chi-square over 20,000 draws); with two slots T logit(soft_0) - (l_0 - l_1)
    is a standard logistic draw (Kolmogorov-Smirnov). Without the Gumbel noise both fail."""
    logits = jnp.array([1.0, 0.0, -0.5, 2.0])
    keys = jax.random.split(jax.random.key(3), 20_000)
    hard = jax.vmap(lambda k: unpooling.relaxed_map(k, logits, 0.7, hard=True))(keys)
    counts = np.asarray(hard).sum(axis=0)
    expected = 20_000 * np.asarray(jax.nn.softmax(logits))
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected)
    pair = jnp.array([0.8, -0.4])
    soft = jax.vmap(lambda k: unpooling.relaxed_map(k, pair, 0.5))(keys[:5000])
    soft0 = np.asarray(soft[:, 0], np.float64)
    noise = 0.5 * np.log(soft0 / (1.0 - soft0)) - 1.2
    assert scipy.stats.kstest(noise, "logistic").pvalue > 1e-3

  def test_jit_equals_eager(self):
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)))
    key = jax.random.key(1)
    jitted = jax.jit(unpooling.relaxed_map, static_argnames="hard")
    for hard in (False, True):
      np.testing.assert_allclose(
          jitted(key, logits, 0.5, hard=hard),
          unpooling.relaxed_map(key, logits, 0.5, hard=hard),
          rtol=1e-14, atol=1e-15)
