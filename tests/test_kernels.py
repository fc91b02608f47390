"""RBF kernel, distances and median bandwidths against numpy/scipy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from dgm_jax import kernels, svgd

# Property tests call jitted functions (eager tracing is slow); jit == eager is tested below.
median_bandwidth = jax.jit(kernels.median_bandwidth, static_argnames="convention")
fast_median = jax.jit(kernels.fast_median)

finite = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)
SHAPES = st.sampled_from([(1, 2), (5, 3), (8, 2)])


def scipy_bandwidth(x, convention):
  """The three conventions of ``kernels.median_bandwidth`` from scipy's distances."""
  m = x.shape[0]
  sq = scipy.spatial.distance.cdist(x, x, "sqeuclidean")
  off = sq[~np.eye(m, dtype=bool)]
  return {"liu_wang": np.median(sq) / math.log(m + 1),
          "paper": np.median(np.sqrt(off)) ** 2 / math.log(m),
          "median": np.median(off)}[convention]


@st.composite
def particles(draw, shapes=SHAPES, lo=-10.0, hi=10.0):
  return draw(hnp.arrays(np.float64, draw(shapes), elements=finite(lo, hi)))


class TestPairwiseSqDists:

  @given(particles(), particles(shapes=st.sampled_from([(4, 3)])))
  def test_matches_scipy(self, x, y):
    y = y[:, : x.shape[1]]
    expected = scipy.spatial.distance.cdist(x, y, "sqeuclidean")
    np.testing.assert_allclose(kernels.pairwise_sq_dists(x, y), expected, rtol=1e-9, atol=1e-9)

  def test_clipped_at_zero_for_identical_rows(self):
    # A tight cloud far from the origin with one row repeated: the Gram form
    # |x|^2 + |y|^2 - 2 x.y of the repeated pair rounds below 0 without the clip (-1e-10).
    x = 300.0 + 1e-3 * np.random.default_rng(0).standard_normal((8, 3))
    x[1] = x[0]
    d = np.asarray(kernels.pairwise_sq_dists(jnp.asarray(x), jnp.asarray(x)))
    assert np.all(d >= 0.0) and d[0, 1] == d[1, 0] == 0.0
    np.testing.assert_allclose(d, scipy.spatial.distance.cdist(x, x, "sqeuclidean"), atol=1e-9)


class TestRBFKernel:

  @given(particles(), finite(0.1, 50.0))
  def test_symmetric_unit_diagonal_psd(self, x, bandwidth):
    gram = np.asarray(kernels.rbf_kernel(x, x, bandwidth))
    np.testing.assert_allclose(gram, gram.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=1e-9)
    assert np.linalg.eigvalsh(gram).min() >= -1e-8

  @given(particles(), hnp.arrays(np.float64, (3,), elements=finite(-100.0, 100.0)),
         st.integers(0, 2**31 - 1), finite(0.1, 50.0))
  def test_invariant_to_translation_and_rotation(self, x, shift, seed, bandwidth):
    dim = x.shape[1]
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    moved = x @ rotation.T + shift[:dim]
    np.testing.assert_allclose(kernels.rbf_kernel(moved, moved, bandwidth),
                               kernels.rbf_kernel(x, x, bandwidth), atol=1e-7)

  @given(particles(), finite(0.1, 50.0))
  def test_matches_direct_formula(self, x, bandwidth):
    diffs = x[:, None, :] - x[None, :, :]
    expected = np.exp(-np.sum(diffs**2, -1) / bandwidth)
    np.testing.assert_allclose(kernels.rbf_kernel(x, x, bandwidth), expected, atol=1e-9)


class TestMedianBandwidth:

  @given(particles(shapes=st.sampled_from([(5, 3), (8, 2), (9, 4)])))
  def test_conventions_match_numpy(self, x):
    for convention in kernels.BANDWIDTH_CONVENTIONS:
      value = scipy_bandwidth(x, convention)
      got = median_bandwidth(x, convention)
      if value > 1e-9:
        np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=convention)
      else:
        assert got == 1.0

  @pytest.mark.parametrize("shape", [(2, 3), (3, 2), (4, 1), (100, 50), (101, 5)])
  def test_from_the_upper_triangle_matches_the_whole_matrix(self, shape):
    # The median is read from the M (M - 1) / 2 distinct distances; numpy's comes from
    # all M * M entries (liu_wang) or the M (M - 1) off-diagonal ones.
    x = np.array(jax.random.normal(jax.random.PRNGKey(shape[0]), shape, jnp.float64))
    if shape[0] > 3:
      x[1] = x[0]  # a zero off-diagonal distance among the rest
    for convention in kernels.BANDWIDTH_CONVENTIONS:
      np.testing.assert_allclose(median_bandwidth(x, convention), scipy_bandwidth(x, convention),
                                 rtol=1e-9, err_msg=convention)

  @pytest.mark.parametrize("convention", kernels.BANDWIDTH_CONVENTIONS)
  def test_float32_tight_set_far_from_the_origin(self, convention):
    # Spread 0.05 at 300 per coordinate: |x|^2 is 4.5e5 in float32 (ulp 0.03), so the
    # uncentred Gram form's distances (about 0.01) would be round-off alone.
    x32 = 300.0 + 0.05 * jax.random.normal(jax.random.PRNGKey(1), (40, 5), jnp.float32)
    x64 = np.asarray(x32, np.float64)  # the same points: the truth sees no rounding of its own
    got = median_bandwidth(x32, convention)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, scipy_bandwidth(x64, convention), rtol=1e-3)
    columns = svgd.coordinate_bandwidths(x32, convention)
    expected = [scipy_bandwidth(x64[:, d:d + 1], convention) for d in range(x64.shape[1])]
    np.testing.assert_allclose(columns, expected, rtol=1e-3)

  @pytest.mark.parametrize("convention", kernels.BANDWIDTH_CONVENTIONS)
  def test_one_particle_and_identical_particles(self, convention):
    for x in (jnp.ones((1, 4)), jnp.full((6, 4), 3.0)):
      h = median_bandwidth(x, convention)
      assert h == 1.0  # the documented fallback: no distances to take a median of

  def test_unknown_convention_is_a_clear_error(self):
    with pytest.raises(ValueError, match="liu_wang"):
      kernels.median_bandwidth(jnp.ones((3, 2)), "silverman")

  def test_gradient_is_stopped(self):
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    grad = jax.grad(lambda p: median_bandwidth(p))(x)
    np.testing.assert_array_equal(grad, 0.0)


class TestFastMedian:

  @given(hnp.arrays(np.float64, st.sampled_from([(1,), (2,), (7,), (10,), (64,)]),
                    elements=finite(-1e6, 1e6)))
  def test_matches_numpy_median(self, values):
    np.testing.assert_allclose(fast_median(values), np.median(values), rtol=1e-12, atol=1e-12)

  @given(hnp.arrays(np.float64, (12,), elements=st.sampled_from([0.0, 1.0, 2.5])))
  def test_ties(self, values):
    np.testing.assert_allclose(fast_median(values), np.median(values))

  @given(hnp.arrays(np.float32, st.sampled_from([(1,), (5,), (33,), (101,)]),
                    elements=st.floats(width=32, allow_nan=False,
                                       allow_infinity=False)))
  def test_odd_float32_is_exactly_the_middle_element(self, values):
    # Bisection on the bit patterns pins the order statistic exactly, over the whole
    # float32 range (signs, subnormals and +-0 included).
    assert float(fast_median(values)) == float(np.sort(values)[(len(values) - 1) // 2])

  @given(hnp.arrays(np.float64, st.integers(1, 40), elements=finite(-1e3, 1e3)),
         st.data())
  def test_order_statistics_match_sorting(self, values, data):
    rank = data.draw(st.integers(1, len(values)))
    with_next = rank < len(values)
    kth, following = kernels.order_statistics(jnp.asarray(values), rank, with_next)
    ordered = np.sort(values)
    assert float(kth) == ordered[rank - 1]
    if with_next:
      assert float(following) == ordered[rank]
    else:
      assert following is None

  def test_float32_large_array(self):
    values = jax.random.exponential(jax.random.PRNGKey(3), (10000,), dtype=jnp.float32)
    np.testing.assert_allclose(fast_median(values), np.median(np.asarray(values)), rtol=1e-6)


def test_jit_and_vmap_equal_eager():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 2))
  for convention in kernels.BANDWIDTH_CONVENTIONS:
    fn = lambda p: kernels.median_bandwidth(p, convention)
    with jax.disable_jit():
      eager = np.array([fn(p) for p in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(x), eager, rtol=1e-12)


def test_fast_median_keeps_subnormals():
  # XLA:CPU flushes subnormals in float reductions; the median is read by gather instead.
  values = jnp.asarray([1e-40, 2e-40, -3e-40, 5.0, -7.0], jnp.float32)
  assert float(fast_median(values)) == float(np.float32(1e-40)) != 0.0
