"""Planar normalizing flows with log-determinants (section 5.3).

Section 5.3 of the dissertation builds p_theta(x|z) and q_phi(z|x) for MNIST
with a normalizing flow of length 80 (Rezende et al., 2015). The text does not
name the family; this module implements that paper's planar flow, the one
chapter 1 names, ``f(z) = z + u_hat tanh(w . z + b)``. The raw ``u`` is
reparametrized to ``u_hat`` with ``w . u_hat = -1 + softplus(w . u) > -1``,
which makes every layer invertible. Because ``w . u_hat`` is known in closed
form, the Jacobian determinant ``1 + sech^2(a) w . u_hat`` (a = w . z + b) is
evaluated as the cancellation-free sum ``tanh^2(a) + sech^2(a) softplus(w .
u)``. A stack of K layers is one ``jax.lax.scan`` over stacked parameters
``u [K, D], w [K, D], b [K]``.
"""

import jax
import jax.numpy as jnp

__all__ = [
    "planar_flow",
    "planar_flow_stack",
    "init_planar_params",
    "invertible_u",
    "planar_flow_stack_inverse",
]


def planar_flow(z, u, w, b):
  """One planar layer ``f(z) = z + u_hat tanh(w . z + b)`` and its log|det|.

  ``det df/dz = 1 + u_hat . psi(z)`` with ``psi = (1 - tanh^2(a)) w``, ``a = w
  . z + b``. Since ``w . u_hat = -1 + softplus(w . u)`` exactly (see
  ``invertible_u``), ``det = tanh^2(a) + sech^2(a) softplus(w . u)``: a sum of
  two non-negative terms, with no cancellation even when ``w . u_hat`` is
  close to -1. It is zero only in the degenerate limit ``a = 0`` with
  ``softplus(w . u)`` underflowed (w . u below about -745 in float64, -104 in
  float32), where the layer is genuinely singular; there the determinant is
  clamped to ``finfo(dtype).tiny`` so log|det| stays finite (about -708 in
  float64, -87 in float32). For ``w = 0`` the layer is the translation by
  ``u tanh(b)`` and log|det| is 0.

  Args:
    z: [..., D] points.
    u: [D] raw direction (any value; reparametrized to u_hat).
    w: [D] normal of the hyperplane.
    b: [] bias.

  Returns:
    ``(z_new, log_abs_det)``: z_new [..., D] and log_abs_det [...].
  """
  u_hat = invertible_u(u, w)
  pre_activation = jnp.einsum("...d,d->...", z, w) + b
  tanh_a = jnp.tanh(pre_activation)
  z_new = z + u_hat * tanh_a[..., None]
  # sech^2 from exp(-|a|), not 1 - tanh^2: that is exactly 0 in float32 for |a| > 8,
  # where a large softplus(w . u) can still make sech^2 softplus the larger term of det.
  decay = jnp.exp(-jnp.abs(pre_activation))
  sech2_a = jnp.square(2.0 * decay / (1.0 + jnp.square(decay)))
  # 1 + w . u_hat: softplus(w . u) for w != 0; 1 for w = 0, where u_hat = u.
  one_plus_w_dot_u_hat = jnp.where(
      jnp.dot(w, w) > 0, jax.nn.softplus(jnp.dot(w, u)), 1.0)
  det = jnp.square(tanh_a) + sech2_a * one_plus_w_dot_u_hat
  tiny = jnp.finfo(det.dtype).tiny
  return z_new, jnp.log(jnp.maximum(det, tiny))


def planar_flow_stack(z, params):
  """K planar layers in order, with ``jax.lax.scan`` over the layer axis.

  Args:
    z: [..., D] points (z_0).
    params: dict with ``"u"`` [K, D], ``"w"`` [K, D] and ``"b"`` [K], as from
      ``init_planar_params``; layer k uses ``u[k], w[k], b[k]``.

  Returns:
    ``(z_K, log_abs_det)``: z_K [..., D] and the sum over layers of
    log|det df_k/dz_{k-1}| [...], so that ``log q_K(z_K) = log q_0(z_0) -
    log_abs_det``.
  """
  u, w, b = params["u"], params["w"], params["b"]
  dtype = jnp.result_type(z, u, w, b)
  z = jnp.asarray(z, dtype)

  init = (z, jnp.zeros(z.shape[:-1], dtype))
  layer_params = (jnp.asarray(u, dtype), jnp.asarray(w, dtype),
                  jnp.asarray(b, dtype))
  (z_out, log_det_sum), _ = jax.lax.scan(_planar_layer, init, layer_params)
  return z_out, log_det_sum


def init_planar_params(key, dim, num_layers, scale=0.1):
  """Parameters of a planar stack: u, w ~ N(0, scale^2), b = 0.

  A small ``scale`` does not make the flow the identity: for ``w . u ~ 0``,
  ``w . u_hat ~ log 2 - 1``, so each layer contracts the direction of w by a
  factor of about 0.69 near ``w . z + b = 0`` (and ``|u_hat|`` grows like
  ``0.31 / |w|``). Very small scales therefore give large ``u_hat``.

  Args:
    key: a PRNG key.
    dim: D, the dimension of z.
    num_layers: K.
    scale: standard deviation of the initial u and w.

  Returns:
    dict with ``"u"`` [K, D], ``"w"`` [K, D], ``"b"`` [K] (float32 unless x64
    is enabled).
  """
  key_u, key_w = jax.random.split(key)
  return {
      "u": scale * jax.random.normal(key_u, (num_layers, dim)),
      "w": scale * jax.random.normal(key_w, (num_layers, dim)),
      "b": jnp.zeros((num_layers,)),
  }


def invertible_u(u, w):
  """Reparametrize u so that ``w . u_hat = m(w . u) >= -1`` (invertibility).

  ``u_hat = u + (m(w . u) - w . u) w / |w|^2`` with ``m(s) = -1 +
  softplus(s)``. Then ``w . u_hat = m(w . u) > -1``, which makes the planar
  layer's restriction to the direction of w strictly increasing and the layer
  a bijection of R^D. For ``w = 0`` the layer is a translation and ``u_hat =
  u`` (a safe division keeps gradients finite there).

  Args:
    u: [..., D] raw directions.
    w: [..., D] hyperplane normals.

  Returns:
    [..., D] u_hat.
  """
  w_dot_u = jnp.sum(w * u, axis=-1, keepdims=True)
  w_sq = jnp.sum(jnp.square(w), axis=-1, keepdims=True)
  positive = w_sq > 0
  safe_w_sq = jnp.where(positive, w_sq, 1.0)
  correction = (-1.0 + jax.nn.softplus(w_dot_u) - w_dot_u) / safe_w_sq
  return u + jnp.where(positive, correction, 0.0) * w


def _planar_layer(carry, layer_params):
  """Scan body: one layer, accumulating log|det|."""
  z, log_det_sum = carry
  z_next, log_det = planar_flow(z, *layer_params)
  return (z_next, log_det_sum + log_det), None


def planar_flow_stack_inverse(z, params, num_bisections=60):
  """Inverts ``flows.planar_flow_stack``: the z_0 with ``stack(z_0) = z``.

  Layer k maps ``z' = z + u_hat tanh(a)``, ``a = w . z + b``; with ``m = w .
  u_hat > -1`` the pre-activation solves ``a + m tanh(a) = w . z' + b =: c``, a
  strictly increasing scalar equation whose root lies in ``[c - |m|, c + |m|]``.
  Bisection finds it without gradients; one Newton step from the stopped root
  gives the value and, by the implicit function theorem, exact gradients with
  respect to z and the flow parameters. Then ``z = z' - u_hat tanh(a)``.

  Args:
    z: [..., D] flow outputs z_K.
    params: ``{"u": [K, D], "w": [K, D], "b": [K]}``.
    num_bisections: bisection steps per layer (60 halve the bracket past the
      float64 resolution).

  Returns:
    [..., D] z_0.
  """

  def invert_layer(z_out, layer):
    u, w, b = layer
    u_hat = invertible_u(u, w)
    m = jnp.dot(w, u_hat)
    c = jnp.einsum("...d,d->...", z_out, w) + b
    c_fixed, m_fixed = jax.lax.stop_gradient((c, m))  # no tangents enter the loop
    h_fixed = lambda a: a + m_fixed * jnp.tanh(a) - c_fixed

    def bisect(_, bracket):
      lo, hi = bracket
      mid = 0.5 * (lo + hi)
      below = h_fixed(mid) < 0
      return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    width = jnp.abs(m_fixed) + 1e-6
    lo, hi = jax.lax.fori_loop(0, num_bisections, bisect, (c_fixed - width, c_fixed + width))
    root = 0.5 * (lo + hi)
    tanh_root = jnp.tanh(root)
    pre_activation = root - (root + m * tanh_root - c) / (1.0 + m * (1.0 - jnp.square(tanh_root)))
    return z_out - u_hat * jnp.tanh(pre_activation)[..., None], None

  dtype = jnp.result_type(z, params["u"], params["w"], params["b"])
  layers = tuple(jnp.asarray(params[name][::-1], dtype) for name in ("u", "w", "b"))
  z_0, _ = jax.lax.scan(invert_layer, jnp.asarray(z, dtype), layers)
  return z_0
