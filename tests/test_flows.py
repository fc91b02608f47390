"""Property tests of dgm_jax.flows against autodiff Jacobians and quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import hypothesis
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from dgm_jax import flows

NUM_LAYERS = 3


def _vectors(dim, bound=10.0):
  return hnp.arrays(np.float64, (dim,),
                    elements=st.floats(-bound, bound, allow_subnormal=False))


@st.composite
def layer_params(draw, dim, bound=10.0, min_w_dot_u=None):
  """Raw (u, w, b), with w . u anywhere from about -1e4 to 1e2.

  ``min_w_dot_u`` moves u along w to keep w . u above it (well-conditioned
  layers, for checks whose reference is not itself conditioning-aware).
  """
  w = draw(_vectors(dim, bound))
  u = draw(_vectors(dim, bound))
  if draw(st.booleans()):  # push w . u far below -1
    u = u - draw(st.floats(0.0, 100.0)) * w
  if min_w_dot_u is not None and w @ u < min_w_dot_u:
    u = u + (min_w_dot_u - w @ u) / (w @ w) * w
  b = draw(st.floats(-bound, bound, allow_subnormal=False))
  return u, w, b


@st.composite
def stack_params(draw, dim, num_layers=NUM_LAYERS, bound=10.0, min_w_dot_u=None):
  layers = [draw(layer_params(dim, bound, min_w_dot_u)) for _ in range(num_layers)]
  return {key: np.stack([layer[i] for layer in layers])
          for i, key in enumerate(("u", "w", "b"))}


def _flow_and_jacobian_log_det(flow):
  """Jitted ``z, args -> (z_new, log_det, slogdet of the autodiff Jacobian)``.

  Parameters are arguments, not constants, so each shape compiles once.
  """
  @jax.jit
  def evaluate(z, *args):
    z_new, log_det = flow(z, *args)
    jacobian = jax.jacfwd(lambda x: flow(x, *args)[0])(z)
    return z_new, log_det, jnp.linalg.slogdet(jacobian)
  return evaluate


_single_with_jacobian = _flow_and_jacobian_log_det(flows.planar_flow)
_stack_with_jacobian = _flow_and_jacobian_log_det(flows.planar_flow_stack)


def _assert_log_det_matches_jacobian(evaluate, z, args, scale):
  """exp(log|det|) against the determinant of the autodiff Jacobian.

  The reference Jacobian I + sech^2 u_hat w^T is formed from the rounded
  u_hat, so its determinant carries an absolute error of order eps * scale
  (scale bounds |u_hat| |w|, or their product over layers); the comparison
  is relative (1e-9) plus that absolute error, so near-singular layers, where
  the reference has no correct digits left, are still checked to be near 0.
  """
  z_new, log_det, (sign, ref_log_det) = evaluate(z, *args)
  assert z_new.shape == z.shape and log_det.shape == ()
  ref_det = float(sign * jnp.exp(ref_log_det))
  atol = 1e-12 * (1.0 + scale)
  assert abs(np.exp(log_det) - ref_det) <= atol + 1e-9 * abs(ref_det)


_batched_planar_flow = jax.jit(jax.vmap(flows.planar_flow, in_axes=(0, None, None, None)))


class TestPlanarFlow:

  @pytest.mark.parametrize("dim", [1, 2, 3])
  @given(data=st.data())
  def test_log_det_matches_jacobian(self, dim, data):
    u, w, b = data.draw(layer_params(dim))
    z = data.draw(_vectors(dim, 5.0))
    u_hat = flows.invertible_u(u, w)
    scale = float(np.linalg.norm(u_hat) * np.linalg.norm(w))
    _assert_log_det_matches_jacobian(_single_with_jacobian, z, (u, w, b), scale)

  @given(layer_params(2), hnp.arrays(np.float64, (4, 5, 2), elements=st.floats(-5.0, 5.0)))
  def test_batch_axes_match_single_points(self, params, z):
    z_new, log_det = flows.planar_flow(z, *params)
    assert z_new.shape == (4, 5, 2) and log_det.shape == (4, 5)
    flat = _batched_planar_flow(z.reshape(-1, 2), *params)
    np.testing.assert_allclose(z_new.reshape(-1, 2), flat[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_det.reshape(-1), flat[1], rtol=1e-10, atol=1e-10)

  @given(layer_params(3), st.floats(-5.0, 5.0))
  def test_increasing_along_w(self, params, offset):
    u, w, b = params
    w_sq = float(w @ w)
    if w_sq == 0.0:
      w = np.ones_like(w)
      w_sq = float(w @ w)
    # Points z = (a - b) w / |w|^2 + offset * v, with v orthogonal to w, so that
    # w . z + b = a runs over a grid; w . f(z) must be strictly increasing in a.
    pre_activation = np.linspace(-6.0, 6.0, 1201)
    orthogonal = np.array([w[1], -w[0], 0.0])
    z = ((pre_activation - b)[:, None] * w / w_sq + offset * orthogonal)
    z_new, _ = flows.planar_flow(z, u, w, b)
    projection = np.asarray(z_new @ w)
    assert np.all(np.diff(projection) > 0.0)

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
  def test_singular_limit_stays_finite(self, dtype):
    w = jnp.array([1.0, 0.0], dtype)
    u = jnp.array([-1e4, 3.0], dtype)  # softplus(w . u) underflows to 0
    z = jnp.zeros((2,), dtype)
    value_and_grad = jax.value_and_grad(
        lambda z, u: flows.planar_flow(z, u, w, jnp.asarray(0.0, dtype))[1],
        argnums=(0, 1))
    log_det, grads = value_and_grad(z, u)
    assert log_det.dtype == dtype
    np.testing.assert_allclose(log_det, np.log(np.finfo(dtype).tiny), rtol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)

  @pytest.mark.parametrize("w_dot_u,a", [(1e4, 8.0), (1e6, 8.0), (1e6, 9.0), (1e6, -9.0),
                                         (1.0, 30.0)])
  def test_float32_log_det_where_tanh_saturates(self, w_dot_u, a):
    """At |a| > 8 float32's 1 - tanh^2(a) is 0, yet sech^2(a) softplus(w . u) is most of
    det when w . u is large (log det 0.372 at w . u = 1e6, a = 8): float32 matches the
    determinant written out in float64."""
    w = np.array([1.0, 0.0])
    u = np.array([w_dot_u, 2.0])
    z = np.array([a, -1.0])
    got = flows.planar_flow(*(jnp.asarray(v, jnp.float32) for v in (z, u, w)),
                            jnp.float32(0.0))[1]
    assert got.dtype == jnp.float32
    softplus = w_dot_u + np.log1p(np.exp(-w_dot_u))
    want = np.log(np.tanh(a)**2 + softplus / np.cosh(a)**2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

  @given(_vectors(2), _vectors(2))
  def test_zero_w_is_a_translation(self, u, z):
    z_new, log_det = flows.planar_flow(z, u, np.zeros(2), 0.5)
    np.testing.assert_allclose(z_new, z + u * np.tanh(0.5), rtol=1e-14, atol=1e-14)
    assert log_det == 0.0

  @given(layer_params(2), hnp.arrays(np.float64, (4, 2), elements=st.floats(-5.0, 5.0)))
  def test_jit_equals_eager(self, params, z):
    u, w, b = params
    eager = flows.planar_flow(z, u, w, b)
    jitted = jax.jit(flows.planar_flow)(z, u, w, b)
    for got, expected in zip(jitted, eager):
      np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


class TestInvertibleU:

  @given(st.data(), st.sampled_from([1, 2, 5]))
  def test_w_dot_u_hat_is_at_least_minus_one(self, data, dim):
    u, w, _ = data.draw(layer_params(dim))
    u_hat = flows.invertible_u(u, w)
    w_dot_u_hat = float(w @ u_hat)
    rounding = 1e-13 * (1.0 + np.linalg.norm(u) * np.linalg.norm(w) + abs(float(w @ u)))
    assert w_dot_u_hat >= -1.0 - rounding
    if w @ w > 0:
      np.testing.assert_allclose(w_dot_u_hat, np.logaddexp(0.0, w @ u) - 1.0,
                                 rtol=1e-12, atol=rounding)
      # Only the component along w changes.
      change = u_hat - u
      np.testing.assert_allclose(change - (change @ w) / (w @ w) * w, 0.0,
                                 atol=1e-12 * (1.0 + np.abs(change).max()))

  @given(hnp.arrays(np.float64, (4, 3), elements=st.floats(-10.0, 10.0)),
         hnp.arrays(np.float64, (4, 3), elements=st.floats(-10.0, 10.0)))
  def test_batched_jit_equals_eager_rows(self, u, w):
    batched = jax.jit(flows.invertible_u)(u, w)
    rows = np.stack([flows.invertible_u(u[i], w[i]) for i in range(4)])
    np.testing.assert_allclose(batched, rows, rtol=1e-10, atol=1e-10)


class TestPlanarFlowStack:

  @pytest.mark.parametrize("dim", [1, 3])
  @given(data=st.data())
  def test_log_det_matches_jacobian(self, dim, data):
    params = data.draw(stack_params(dim, bound=3.0))
    z = data.draw(_vectors(dim, 3.0))
    u_hat = flows.invertible_u(params["u"], params["w"])
    # Product of the per-layer scales bounds the rounding of the product Jacobian.
    layer_scales = np.linalg.norm(u_hat, axis=1) * np.linalg.norm(params["w"], axis=1)
    scale = float(np.prod(1.0 + layer_scales))
    _assert_log_det_matches_jacobian(_stack_with_jacobian, z, (params,), scale)

  @given(stack_params(2, min_w_dot_u=-10.0),
         hnp.arrays(np.float64, (4, 2), elements=st.floats(-5.0, 5.0)))
  def test_scan_equals_layers_one_by_one(self, params, z):
    z_k, log_det_sum = z, np.zeros(4)
    for k in range(NUM_LAYERS):
      z_k, log_det = flows.planar_flow(z_k, params["u"][k], params["w"][k], params["b"][k])
      log_det_sum = log_det_sum + log_det
    got_z, got_log_det = flows.planar_flow_stack(z, params)
    np.testing.assert_allclose(got_z, z_k, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_log_det, log_det_sum, rtol=1e-10, atol=1e-10)

  @given(stack_params(2), hnp.arrays(np.float64, (4, 2), elements=st.floats(-5.0, 5.0)))
  def test_jit_equals_eager(self, params, z):
    eager = flows.planar_flow_stack(z, params)
    jitted = jax.jit(flows.planar_flow_stack)(z, params)
    for got, expected in zip(jitted, eager):
      np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)

  def test_float32_input_with_float64_params(self):
    params = flows.init_planar_params(jax.random.key(0), 2, 4, scale=0.5)
    z_out, log_det = flows.planar_flow_stack(jnp.ones((3, 2), jnp.float32), params)
    assert z_out.shape == (3, 2) and log_det.shape == (3,)


@jax.jit
def _forward_1d(flow_params, z):
  """The stack on scalar points z [...] (D = 1)."""
  return flows.planar_flow_stack(z[..., None], flow_params)[0][..., 0]


@jax.jit
def _pushed_forward_density(flow_params, y, min_slope):
  """q_K(y) = N(z_0) exp(-log|det|(z_0)) with z_0 = f^{-1}(y) by bisection.

  ``f`` is increasing with slope >= min_slope, so f^{-1}(y) lies within
  |f(y) - y| / min_slope of y: that bracket is halved 100 times.
  """
  radius = jnp.abs(_forward_1d(flow_params, y) - y) / min_slope + 1e-3

  def step(_, bracket):
    low, high = bracket
    mid = 0.5 * (low + high)
    below = _forward_1d(flow_params, mid) < y
    return jnp.where(below, mid, low), jnp.where(below, high, mid)

  low, high = jax.lax.fori_loop(0, 100, step, (y - radius, y + radius))
  z0 = 0.5 * (low + high)
  _, log_det = flows.planar_flow_stack(z0[..., None], flow_params)
  return jnp.exp(jax.scipy.stats.norm.logpdf(z0) - log_det)


def _gauss_legendre(edges, num_nodes=20):
  """Nodes [P, N] and weights [P, N] of composite Gauss-Legendre on panels."""
  nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
  half = 0.5 * np.diff(edges)[:, None]
  return (0.5 * (edges[1:] + edges[:-1]))[:, None] + half * nodes, half * weights


class TestChangeOfVariables:
  """In D = 1 the pushed-forward density of N(0, 1) integrates to 1.

  The density of y = f(z_0) is evaluated at quadrature nodes in y through an
  inverse by bisection and the log-determinant; its integral and first two
  moments, by composite Gauss-Legendre quadrature over y, must equal 1 and
  E[f(z_0)^k] by the same quadrature over z_0. The y panels are the images
  f(z_i) of a fine z grid, so they are narrow where the density peaks; the
  density itself never uses the grid. A wrong log-determinant or a map that is
  not a bijection breaks the identities. Parameters are moderate (|w| >=
  0.1, w . u >= -2): as w -> 0, |u_hat| grows like 1 / |w| and f(z) is lost
  in rounding; for w . u -> -inf the density has an unbounded spike.
  """

  @pytest.mark.parametrize("num_layers", [1, NUM_LAYERS])
  @given(data=st.data())
  def test_density_integrates_to_one(self, num_layers, data):
    params = data.draw(stack_params(1, num_layers=num_layers, bound=3.0))
    w = params["w"][:, 0]
    w = np.where(np.abs(w) < 0.1, 0.1, w)
    u = np.maximum(params["u"][:, 0] * w, -2.0) / w
    params = {"u": u[:, None], "w": w[:, None], "b": params["b"]}
    # Per layer, f' = tanh^2 + sech^2 softplus(w . u) >= min(1, softplus(w . u)).
    min_slope = float(np.prod(np.minimum(1.0, np.logaddexp(0.0, u * w))))
    z_limit = 13.0  # N(0, 1) mass beyond is below 1e-37

    z_nodes, z_weights = _gauss_legendre(np.linspace(-z_limit, z_limit, 521))
    y_edges = np.asarray(_forward_1d(params, jnp.linspace(-z_limit, z_limit, 521)))
    assert np.all(np.diff(y_edges) > 0.0)
    y_nodes, y_weights = _gauss_legendre(y_edges)
    density = np.asarray(_pushed_forward_density(params, jnp.asarray(y_nodes), min_slope))
    pushed = [np.sum(y_weights * y_nodes**k * density) for k in (0, 1, 2)]
    y_of_z = np.asarray(_forward_1d(params, jnp.asarray(z_nodes)))
    pulled = [np.sum(z_weights * y_of_z**k * stats.norm.pdf(z_nodes)) for k in (0, 1, 2)]
    np.testing.assert_allclose(pushed[0], 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pushed, pulled, rtol=1e-8, atol=1e-9)


class TestInitPlanarParams:

  def test_shapes_scale_and_finite_flow(self):
    params = flows.init_planar_params(jax.random.key(1), dim=5, num_layers=80, scale=0.1)
    assert params["u"].shape == (80, 5) and params["w"].shape == (80, 5)
    np.testing.assert_array_equal(params["b"], np.zeros(80))
    np.testing.assert_allclose(np.std(params["w"]), 0.1, rtol=0.2)
    again = flows.init_planar_params(jax.random.key(1), dim=5, num_layers=80, scale=0.1)
    np.testing.assert_array_equal(again["u"], params["u"])
    z = jax.random.normal(jax.random.key(2), (16, 5))
    z_out, log_det = flows.planar_flow_stack(z, params)
    assert z_out.shape == (16, 5) and log_det.shape == (16,)
    assert np.all(np.isfinite(z_out)) and np.all(np.isfinite(log_det))


class TestPlanarFlowStackInverse:

  @given(stack_params(2, bound=3.0, min_w_dot_u=-0.5),
         hnp.arrays(np.float64, (4, 2), elements=st.floats(-5.0, 5.0)))
  def test_inverse_recovers_the_input(self, params, z):
    """Each layer is strictly monotone along w (w . u_hat > -1), so bisection finds the root."""
    w_norms = np.linalg.norm(params["w"], axis=1)
    hypothesis.assume(np.all(w_norms > 0.1))
    z_k, _ = _stack(z, params)
    np.testing.assert_allclose(_stack_inverse(z_k, params), z, atol=1e-7)

  def test_inverse_jacobian_is_the_inverse_of_the_forward_jacobian(self):
    """At y = f(z): numpy's inverse of the autodiff Jacobian of the forward stack is the
    Jacobian of the inverse (the bisection alone carries no tangents; the implicit-function
    step does), and the inverse recovers z to 1e-12."""
    rng = np.random.default_rng(0)
    params = {"u": rng.normal(size=(NUM_LAYERS, 3)), "w": rng.normal(size=(NUM_LAYERS, 3)),
              "b": rng.normal(size=NUM_LAYERS)}
    z = rng.normal(size=3)
    y = _stack(z, params)[0]
    np.testing.assert_allclose(_stack_inverse(y, params), z, rtol=0, atol=1e-12)
    forward_jacobian = np.asarray(_forward_jacobian(z, params))
    assert np.linalg.cond(forward_jacobian) < 1e3
    np.testing.assert_allclose(_inverse_jacobian(y, params), np.linalg.inv(forward_jacobian),
                               rtol=1e-9, atol=1e-12)


_stack = jax.jit(flows.planar_flow_stack)
_stack_inverse = jax.jit(flows.planar_flow_stack_inverse)

_forward_jacobian = jax.jit(jax.jacfwd(lambda z, p: flows.planar_flow_stack(z, p)[0]))
_inverse_jacobian = jax.jit(jax.jacfwd(flows.planar_flow_stack_inverse))
