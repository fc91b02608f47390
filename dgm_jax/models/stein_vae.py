"""Stein VAE and Stein VIWAE (chapter 4, sections 4.2-4.3).

One train step, as in section 4.2:

1. codes ``z_jn = f_eta(x_n, xi_j)`` for M particles per example, with the noise
   ``xi_j ~ N(0, I)`` shared across the data points of the step (4.5);
2. scores ``grad_z [log p(x_n | z, theta) + log p(z)]``, averaged over decoder
   samples theta_j when there are several (4.12);
3. the SVGD move of each example's particles, ``z' = z + eps phi(z)`` (4.12); the
   Stein VIWAE (4.3) uses the self-normalized importance-weighted direction
   (4.42)-(4.43) with ``log w = log p(x, z) - log q(z | x)`` and the encoder
   density from the change of variables ``q(z|x) = q0(xi) |det df/dxi|^-1``;
4. the encoder fitted to the moved particles by K gradient steps on (4.13)
   (optionally on the first m of the M exchangeable particles,
   ``encoder_fit_particles``: an unbiased, noisier gradient at m / M the cost);
5. the decoder: a point estimate follows the gradient of (4.1) at this
   iteration's codes, from the same backward pass as the scores (importance
   weighted for the VIWAE; for the Stein VAE optionally from the first m of the
   M exchangeable particles, ``decoder_grad_particles``); M_theta > 1 decoder samples move by
   SVGD (4.11) with a kernel on their flattened parameters.

Semi-supervised (4.4, ``semi_supervised=True``): each step also takes B_l labeled
pairs; their codes move with the scores of (4.54), which add ``zeta log p(y | z,
theta~)`` with ``p(y | z) = softmax(theta~ z)``, theta~ follows the gradient of
(4.51) (times zeta, the label term's weight in (4.54): a constant factor, which Adam's
step absorbs but for its eps) and the test split reports ``error_rate`` of ``argmax_y
E_q[p(y | z)]`` (``models.semi_supervised``).

Evaluation (4.5.2) reports the ELBO, with the entropy from the change of
variables, and the importance-sampled bound (S-ELBO), averaged over decoder samples.

Few particles in many dimensions (``repulsion_scale``, not in the dissertation;
1 by default). The encoder is fitted to particles it drew itself, so its spread
settles where the fit's gradient from the SVGD move of M of its own samples
averages to zero. With M much smaller than d the move's repulsive term is weak
(the variance collapse of SVGD in high dimensions), and the fit also absorbs the
pull of each set's mean towards the posterior mean, which a shared encoder can
only reduce by narrowing: for ``z = sigma xi`` and a wide kernel that part of the
gradient on sigma is ``-sigma |sum_j xi_j|^2 / M``, of mean ``-sigma d``. So the encoder settles
narrower than the posterior. ``tests/test_svgd.py`` measures the fixed point on
a Gaussian posterior N(0, I) with d = 50, M = 10 and the median bandwidth:
sigma^2 = 0.06 with alpha = 1, 0.37 with alpha = 6. The decoder, trained on the
narrow codes, sharpens in turn, and the test likelihood falls as training goes
on (README). ``repulsion_scale`` = alpha > 1 multiplies SVGD's repulsive term
and widens the fixed point about alpha-fold in variance.

``kernel="coordinatewise"`` (not in the dissertation) replaces the RBF kernel by
the diagonal matrix-valued kernel of ``svgd.coordinatewise_svgd_direction``: one
SVGD per latent coordinate, driven by the full score. Its repulsion does not
fade with d, and the same test measures sigma^2 = 0.62 for M = 10 in d = 50 (as
in d = 5). What it gives up: its fixed points pin down each coordinate's spread
along the score, not the posterior's correlations (for a Gaussian posterior with
precision Lambda every covariance S with diag(Lambda S) = 1 is one).

``preconditioner="gauss_newton"`` (not in the dissertation) moves each example's
particles with the matrix-valued kernel ``Q^-1 k(L^T z, L^T z')`` of
``svgd.preconditioned_svgd_direction``, Q = L L^T the Gauss-Newton precision of
``log p(x, z)`` at the mean of the example's particles
(``gauss_newton_precision``: ``J^T diag(p (1 - p)) J + I`` for Bernoulli pixels
with logits' Jacobian J, plus the prior's I). The target is unchanged; what
changes is the encoder's fixed point. With the RBF kernel a linear encoder
``z = A xi`` fitted to the moves of few particles follows, to first order,
``dA ~ (gamma I - Lambda) A`` for posterior precision Lambda and a scalar
repulsion gamma: q collapses along the posterior's narrow directions and keeps its
wide ones (the whitened variances 2e-5 to 0.46 in the README). In the coordinates
``u = L^T z`` the posterior is close to N(0, I), every direction is alike, and q
settles at ``c Lambda^-1`` with c the isotropic fixed point
(``tests/test_svgd.py``: 0.06 for M = 10, d = 50, alpha = 1; about 1 with alpha = 16).
The Jacobian costs D forward-mode passes of the decoder per example.

What M particles cannot see: q's local volume (``entropy_weight``,
``fit_metric``; not in the dissertation, off by default). The particles' repulsion
keeps M codes apart, and a map ``xi -> z`` that is thin along some directions of z
but bent so that its samples still spread as widely keeps them as far apart. The
fit (4.13) has no force against that, and q's entropy ``H(q0) + E log|det
df/dxi|`` (for a map one-to-one in xi) falls far below that of a Gaussian with q's
moments (``eval.posterior_shape``'s ``entropy_deficit``: 17.9 nats after 10 epochs
of ``:precond`` on MNIST, 18.7 after 50 epochs with M = 100; README), which makes q a
poor proposal. ``entropy_weight`` = lambda adds ``-lambda eps E_j log|det
df/dxi_j|`` per example to the fit, ``-lambda eps H(q(z | x))`` up to a constant,
estimated on the first m = ``entropy_particles`` particles
(``log_abs_det_jacobian``: D batched forward-mode passes of the encoder over the
B x m codes); its gradient ``1 / sigma`` grows without bound as a direction thins.

lambda = 1 with the dissertation's alpha = 1 makes the posterior a fixed point of
the encoder, for any M and d: for z = sigma xi fitted towards N(0, I), each
particle's own term of the move gives ``-sigma d`` to the fit's force on sigma,
the entropy ``+lambda d / sigma``, and the terms between particles vanish at q = p by
Stein's identity (exactly so for a fixed bandwidth, and only when the repulsive part
is not rescaled, alpha = 1); ``tests/test_svgd.py`` measures 1.00 and 0.99 with the
median bandwidth for M = 10 and 100 in d = 50. The entropy must be weighed in the
posterior's metric: with the preconditioned kernel the move is ``Q^-1`` times the
plain one, so against a Euclidean fit the entropy's push would hold q at one width in
every direction of z. ``fit_metric='precision'`` measures the fit's errors as
``|L^T (f - z')|``, which takes the ``Q^-1`` back out of the encoder's gradient, and
in the whitened coordinates the problem is the isotropic one above.
``configs/mnist.py:entropy`` sets all three.

The VIWAE's entropy (``entropy_weights``, not in the dissertation). The Stein VIWAE's
move (4.42) weighs every particle's score term by its self-normalized importance weight,
so a code in q's tail, where p / q is small, feels almost no pull back; an entropy term
that weighs every code alike still pushes it out. Nothing then holds q's tails: a
location-scale encoder fitted this way towards N(0, I) widens them from q = p, its
bandwidth grows and the effective sample size falls towards 1 (``tests/models/
test_stein_vae.py``, ``tail_dynamics``), as in the MNIST run that diverged (README).
``entropy_weights='importance'`` weighs code j's log|det| by ``M w_j`` (gradients
stopped), as the move weighs its pull: the entropy term becomes a self-normalized
average under p, push and pull shrink together in the tails, and at q = p the weights
are uniform, so the calibrated fixed point above is unchanged. ``configs/mnist.py``
sets it with ``entropy`` and ``viwae``.

The shape of f_eta (``encoder_output``, not in the dissertation; ``"mlp"`` by default).
The dissertation's f_eta is an MLP on ``[x, xi]`` whose output is z, so the noise reaches
z only through the tanh layers and every x-dependent scale must come from their
curvature. ``encoder_output="location_scale"`` reads the last layer as two halves,
``z = m(x, xi) + exp(v(x, xi) / 2) * xi``, with the noise's input weights starting at zero:
the step's algorithm is unchanged, f_eta starts as the Gaussian VAE's encoder (the same
trunk and heads), and the noise input lets q bend away from a Gaussian as training goes on.
Its density still comes from the change of variables (``nets.recognition``).
``configs/mnist.py:entropy,location_scale``.

Refined particles (``svgd_steps``, ``decoder_codes``; not in the dissertation, 1 and
``"initial"`` by default). The dissertation moves the particles once per iteration and
takes the decoder's gradient of (4.1) at the encoder's codes z^(t), so the decoder learns
from q's samples, as a VAE's does; the moves reach it only through the encoder's fit.
``svgd_steps`` = T moves the particles T times per iteration, each move from the scores
at the particles it starts from (one more pass of the decoder per move; the
preconditioner's Q stays that of z^(t)); the encoder is fitted to the last, and its
entropy term is weighed by T eps, the length of the T moves, so the calibrated fixed point
above is kept to first order. ``decoder_codes="moved"`` takes the gradient of (4.1) at the
particles after the moves, which SVGD has moved towards the posterior, in a pass of its own
(and the ``loss`` metric there, so it does not compare with an ``"initial"`` run's). Both
apply to the unsupervised Stein VAE with one decoder.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dgm_jax import bounds, likelihoods, svgd
from dgm_jax.data import transforms
from dgm_jax.eval import nll
from dgm_jax.eval import posterior_shape as shape
from dgm_jax.models import semi_supervised
from dgm_jax.models.base import Method, check_dropout, make_optimizer
from dgm_jax.nets import conv
from dgm_jax.nets.mlp import MLP
from dgm_jax.nets.recognition import ENCODER_OUTPUTS, NoiseConvEncoder, NoiseMLPEncoder
from dgm_jax.train.state import TrainState

__all__ = [
    "make_method",
    "latent_scores",
    "svgd_move",
    "encoder_fit_loss",
    "codes_fit_loss",
    "change_of_variables_log_q",
    "log_abs_det_jacobian",
    "weighted_mean_log_det",
    "gauss_newton_precision",
    "PRECONDITIONERS",
    "FIT_METRICS",
    "ENTROPY_WEIGHTS",
    "DECODER_CODES",
]

PRECONDITIONERS = ("none", "gauss_newton")
DECODER_CODES = ("initial", "moved")
FIT_METRICS = ("euclidean", "precision")
ENTROPY_WEIGHTS = ("uniform", "importance")


def latent_scores(log_joint_fn, z):
  """Per-particle scores ``grad_z log p~(z)`` of a log-joint summed over its inputs.

  Args:
    log_joint_fn: ``z [..., D] -> [...]``, each output depending only on its own z.
    z: [..., D] particles.

  Returns:
    (log_joint [...], scores [..., D]).
  """
  log_joint, vjp = jax.vjp(log_joint_fn, z)
  (scores,) = vjp(jnp.ones_like(log_joint))
  return log_joint, scores


def svgd_move(z, scores, step_size, log_weights=None, convention="liu_wang",
              repulsion_scale=1.0, kernel="rbf", precision_cholesky=None):
  """Moves every example's particles along the (weighted) SVGD direction (4.12)/(4.42).

  Args:
    z: [B, M, D] particles of B examples.
    scores: [B, M, D].
    step_size: eps.
    log_weights: [B, M] importance log-weights (Stein VIWAE) or None.
    convention: median-bandwidth convention.
    repulsion_scale: alpha multiplying the repulsive term (1 in the dissertation).
    kernel: ``"rbf"`` (the dissertation's) or ``"coordinatewise"`` (the diagonal
      matrix-valued kernel of ``svgd.coordinatewise_svgd_direction``).
    precision_cholesky: None, or [B, D, D] Cholesky factors L of each example's
      preconditioner Q = L L^T (``svgd.preconditioned_svgd_direction``).

  Returns:
    (moved particles [B, M, D] with gradients stopped, mean bandwidths [B]).
  """
  if log_weights is None:
    log_weights = jnp.zeros(z.shape[:2], z.dtype)  # uniform: (4.12)
  settings = dict(convention=convention, repulsion_scale=repulsion_scale, kernel=kernel)
  if precision_cholesky is None:
    direction, bandwidth = jax.vmap(lambda *a: svgd.kernel_svgd_direction(*a, **settings))(
        z, scores, log_weights)
  else:
    direction, bandwidth = jax.vmap(
        lambda *a: svgd.preconditioned_svgd_direction(*a, **settings))(
            z, scores, log_weights, precision_cholesky)
  return (jax.lax.stop_gradient(z + step_size * direction),
          jnp.mean(bandwidth.reshape(bandwidth.shape[0], -1), axis=1))


def encoder_fit_loss(encode, x, xi, targets, metric_cholesky=None):
  """(4.13): ``sum_j ||f_eta(x_n, xi_j) - z'_jn||^2 / 2``, averaged over examples.

  Args:
    encode: ``(x [B, 1, P], xi [1, M, D]) -> [B, M, D]``, closed over eta.
    x: [B, P].
    xi: [M, D].
    targets: [B, M, D] moved particles z'.
    metric_cholesky: None (Euclidean, the dissertation's), or [B, D, D] factors L of
      each example's metric Q = L L^T: the errors are measured as ``|L^T (f - z')|``.

  Returns:
    Scalar loss.
  """
  return codes_fit_loss(encode(x[:, None, :], xi[None]), targets, metric_cholesky)


def codes_fit_loss(codes, targets, metric_cholesky=None):
  """(4.13) of given codes ``[B, M, D]``; its gradient in codes is ``Q (codes - targets) / B``
  (Q = I without ``metric_cholesky``)."""
  errors = codes - targets
  if metric_cholesky is not None:  # rows e L = (L^T e)^T
    errors = jnp.einsum("bmd,bde->bme", errors, jax.lax.stop_gradient(metric_cholesky))
  return 0.5 * jnp.mean(jnp.sum(jnp.square(errors), axis=(-2, -1)))


def change_of_variables_log_q(encode_one, xi):
  """log q(z) = log N(xi; 0, I) - log |det df/dxi| for a square map z = f(xi).

  Exact only where f is one-to-one: where f folds (k preimages xi of one z) this is
  about log q(z) - log k, and importance weights p / q built on it overstate p(x)
  by the mean k. Nothing forces f_eta to be injective; :func:`density_check`
  measures it for a trained encoder (README, "Is q's density q's?").

  Args:
    encode_one: ``xi [D] -> z [D]`` for one example.
    xi: [D].

  Returns:
    (z [D], log q(z) scalar).
  """
  z, log_q, _ = _change_of_variables(encode_one, xi)
  return z, log_q


def _change_of_variables(encode_one, xi):
  """(z, log q(z), sign of det df/dxi) from one Jacobian."""
  z = encode_one(xi)
  sign, log_abs_det = jnp.linalg.slogdet(jax.jacfwd(encode_one)(xi))
  log_q0 = jnp.sum(likelihoods.gaussian_log_prob(xi, 0.0, 0.0))
  return z, log_q0 - log_abs_det, sign


def density_check(encode_one, key, num_samples, latent_dim):
  """Whether the change-of-variables density of ``encode_one`` is the density of its codes.

  With g a Gaussian fitted to ``num_samples`` codes and q^ the density of
  :func:`change_of_variables_log_q`, ``E_{z ~ q}[g(z) / q^(z)] = 1`` exactly when
  q^ = q (g is normalized); where f folds, q^ is too small and the mean is the
  mean number of preimages. A fold also shows as a change of sign of det df/dxi
  (not always: z = xi^2 as a complex number has det 4 |xi|^2 > 0 and two preimages).
  The identity needs g's mass inside q's support: where f does not reach all of R^D
  the estimate is low by the mass of g it misses.

  Args:
    encode_one: ``xi [D] -> z [D]`` for one example.
    key: PRNG key.
    num_samples: draws of xi for the fit and, independently, for the estimate.
    latent_dim: D, the dimension of xi and z.

  Returns:
    (fraction of the codes whose det df/dxi has the less common sign,
     log of the estimate of E_q[g / q^]; 0 up to sampling error for an injective f).
  """
  fit_key, draw_key = jax.random.split(key)

  def codes(k):
    xi = jax.random.normal(k, (num_samples, latent_dim))
    return jax.vmap(lambda e: _change_of_variables(encode_one, e))(xi)

  fitted, _, _ = codes(fit_key)
  z, log_q, signs = codes(draw_key)
  mean = jnp.mean(fitted, axis=0)
  cov = jnp.cov(fitted.T) + 1e-6 * jnp.eye(fitted.shape[1], dtype=fitted.dtype)
  cholesky = jnp.linalg.cholesky(cov)
  white = jax.scipy.linalg.solve_triangular(cholesky, (z - mean).T, lower=True)
  log_g = (-0.5 * jnp.sum(jnp.square(white), axis=0) - jnp.sum(jnp.log(jnp.diag(cholesky)))
           - 0.5 * z.shape[1] * jnp.log(2.0 * jnp.pi))
  minority = jnp.minimum(jnp.mean(signs > 0), jnp.mean(signs < 0))
  return minority, jax.nn.logsumexp(log_g - log_q) - jnp.log(num_samples)


def log_abs_det_jacobian(encode_noise, xi):
  """``log |det df/dxi|`` at every code of a row-wise map ``z = f(xi)``.

  The entropy of the encoder's q by the change of variables (4.5.2) is
  ``H(q0) + E log |det df/dxi|``. One forward-mode pass per latent direction
  gives column k of every code's Jacobian at once, so examples, particles and a
  shared dropout mask need no per-code ``jacfwd``.

  Args:
    encode_noise: ``xi [..., D] -> z [..., D]`` (broadcast to the codes' shape), where
      each code depends on its own row of xi only (``NoiseMLPEncoder``: z[b, j] on xi[j]).
    xi: [..., D] the noise.

  Returns:
    [...codes] log |det| of each code's D x D Jacobian (the codes' batch shape).
  """
  latent_dim = xi.shape[-1]

  def column(direction):
    return jax.jvp(encode_noise, (xi,), (jnp.broadcast_to(direction, xi.shape),))[1]

  columns = jax.vmap(column)(jnp.eye(latent_dim, dtype=xi.dtype))  # [D(in), ..., D(out)]
  return jnp.linalg.slogdet(jnp.moveaxis(columns, 0, -1))[1]


def weighted_mean_log_det(log_det, weights=None):
  """The entropy term's estimate of ``E log|det df/dxi|`` from its first m particles.

  Args:
    log_det: [B, m] log|det df/dxi| at each example's first m codes.
    weights: None (each code weighed 1 / m, the Stein VAE's q-average), or [B, M]
      self-normalized importance weights of all M codes (the Stein VIWAE): code j
      weighed ``M w_j / m``, gradients stopped, so the term is a self-normalized
      estimate of the average under p, the distribution the weighted move pulls by.

  Returns:
    Scalar: the mean over examples.
  """
  if weights is None:
    return jnp.mean(log_det)
  num_particles, num_used = weights.shape[1], log_det.shape[1]
  scale = jax.lax.stop_gradient(num_particles * weights[:, :num_used])
  return jnp.mean(scale * log_det)


def gauss_newton_precision(logits_fn, z):
  """``J^T diag(p (1 - p)) J + I``: the Gauss-Newton precision of Bernoulli pixels and N(0, I).

  The Fisher information of ``log p(x | z)`` for logits ``logits_fn(z)`` [P]
  (p their sigmoid, J their [P, D] Jacobian at z) plus the standard normal prior's
  precision; positive definite, so it has a Cholesky factor.

  Args:
    logits_fn: ``z [D] -> [P]`` decoder logits.
    z: [D] where to take it (gradients stopped).

  Returns:
    [D, D].
  """
  z = jax.lax.stop_gradient(z)
  logits, jvp = jax.linearize(logits_fn, z)
  jacobian = jax.vmap(jvp, out_axes=1)(jnp.eye(z.shape[-1], dtype=z.dtype))  # [P, D]
  curvature = jax.nn.sigmoid(logits) * jax.nn.sigmoid(-logits)
  return jacobian.T @ (curvature[:, None] * jacobian) + jnp.eye(z.shape[-1], dtype=z.dtype)


def section_choice(section, key, default, choices, meaning):
  """Reads ``stein_vae.<key>`` (``default`` when absent) and refuses a value outside
  ``choices`` with one line naming the setting, the choices and what each means."""
  value = section.get(key, default)
  if value not in choices:
    raise ValueError(f"stein_vae.{key}={value!r} is not one of {choices} ({meaning})")
  return value


def make_method(config, spec):
  """Builds the Stein VAE / VIWAE from ``config.stein_vae`` and the data spec."""
  section = config.stein_vae
  num_pixels = int(np.prod(spec.shape))
  latent_dim = section.latent_dim
  num_particles = section.num_particles
  num_decoders = section.decoder_samples
  grad_particles = section.get("decoder_grad_particles", 0) or num_particles
  if not 0 < grad_particles <= num_particles:
    raise ValueError(f"decoder_grad_particles={grad_particles} must lie in [0, num_particles="
                     f"{num_particles}] (0: all particles)")
  if section.importance_weighted and grad_particles < num_particles:
    raise ValueError("decoder_grad_particles applies to the Stein VAE only: the VIWAE's decoder "
                     "gradient uses the self-normalized weights of all M particles; set it to 0")
  fit_particles = section.get("encoder_fit_particles", 0) or num_particles
  if not 0 < fit_particles <= num_particles:
    raise ValueError(f"encoder_fit_particles={fit_particles} must lie in [0, num_particles="
                     f"{num_particles}] (0: all particles)")
  if section.encoder_steps < 1:
    raise ValueError(f"encoder_steps={section.encoder_steps} must be at least 1")
  repulsion_scale = section.get("repulsion_scale", 1.0)
  if not repulsion_scale > 0:
    raise ValueError(f"repulsion_scale={repulsion_scale!r} must be > 0 (1: the dissertation's "
                     "SVGD; above 1 widens an encoder that follows few particles)")
  kernel = section_choice(section, "kernel", "rbf", svgd.KERNELS, (
      "'rbf': the dissertation's; 'coordinatewise': one SVGD per latent coordinate"))
  preconditioner = section_choice(section, "preconditioner", "none", PRECONDITIONERS, (
      "'none': the dissertation's kernel; 'gauss_newton': the kernel whitened by each "
      "example's Gauss-Newton precision"))
  encoder_output = section_choice(section, "encoder_output", "mlp", ENCODER_OUTPUTS, (
      "'mlp': the dissertation's f_eta(x, xi); 'location_scale': z = m + exp(v / 2) xi from "
      "the MLP's two halves"))
  if encoder_output != "mlp" and section.get("encoder_arch", "mlp") != "mlp":
    raise ValueError(f"stein_vae.encoder_output={encoder_output!r} applies to MLP encoders; "
                     "set it to 'mlp' with encoder_arch='conv'")
  svgd_steps = section.get("svgd_steps", 1)
  if not (isinstance(svgd_steps, int) and svgd_steps >= 1):
    raise ValueError(f"stein_vae.svgd_steps={svgd_steps!r} must be an integer >= 1 (1: the "
                     "dissertation's one SVGD move per iteration)")
  decoder_codes = section_choice(section, "decoder_codes", "initial", DECODER_CODES, (
      "'initial': the gradient of (4.1) at the encoder's codes z^(t); 'moved': at the "
      "particles after the step's SVGD moves"))
  refined = [setting for setting, used in ((f"svgd_steps={svgd_steps}", svgd_steps > 1), (
      f"decoder_codes={decoder_codes!r}", decoder_codes == "moved")) if used]
  conflicts = [setting for setting, used in (
      ("importance_weighted=True (moved codes have no change-of-variables density for the "
       "VIWAE's weights)", section.importance_weighted),
      ("semi_supervised=True (the label term keeps the dissertation's one move)",
       section.semi_supervised),
      (f"decoder_samples={num_decoders} (their SVGD keeps the dissertation's one move)",
       num_decoders > 1)) if used]
  if refined and conflicts:
    raise ValueError(f"stein_vae.{' and '.join(refined)} apply to the unsupervised Stein VAE "
                     f"with one decoder, not with {' and '.join(conflicts)}; set svgd_steps=1 "
                     "and decoder_codes='initial'")
  semi = semi_supervised.settings_from(section, spec)
  conv.check_section(section, spec.shape)
  dropout_rate = check_dropout(section)
  if dropout_rate and section.importance_weighted:
    raise ValueError("encoder_dropout applies to the Stein VAE only: the VIWAE's weights need "
                     "the change-of-variables density of each example's masked encoder; set it "
                     "to 0")
  fit_metric = section_choice(section, "fit_metric", "euclidean", FIT_METRICS, (
      "'euclidean': the dissertation's (4.13); 'precision': errors measured by the "
      "Gauss-Newton precision"))
  if fit_metric == "precision" and preconditioner != "gauss_newton":
    raise ValueError("stein_vae.fit_metric='precision' measures the fit by the Gauss-Newton "
                     "precision, which preconditioner='gauss_newton' computes; set both")
  entropy_weight = section.get("entropy_weight", 0.0)
  if not entropy_weight >= 0:
    raise ValueError(f"stein_vae.entropy_weight={entropy_weight!r} must be >= 0 (0: the "
                     "dissertation's fit (4.13); lambda > 0 also ascends lambda eps E log|det "
                     "df/dxi|)")
  entropy_particles = section.get("entropy_particles", 1)
  if not (isinstance(entropy_particles, int) and 0 < entropy_particles <= num_particles):
    raise ValueError(f"stein_vae.entropy_particles={entropy_particles} must be an integer in "
                     f"[1, num_particles={num_particles}]")
  entropy_weights = section_choice(section, "entropy_weights", "uniform", ENTROPY_WEIGHTS, (
      "'uniform': each particle's log|det| weighed 1 / m; 'importance': by M times its "
      "importance weight, the Stein VIWAE's"))
  if entropy_weights == "importance" and not section.importance_weighted:
    raise ValueError("stein_vae.entropy_weights='importance' weighs the entropy term by the "
                     "Stein VIWAE's importance weights; set importance_weighted=True or "
                     "entropy_weights='uniform'")
  encoder, decoder = make_nets(section, spec)
  label_decoder = semi_supervised.LabelDecoder(semi.num_classes) if semi else None
  steps_per_epoch = max(spec.num_train // config.data.batch_size, 1)
  encoder_opt = make_optimizer(section, config.train.num_steps * section.encoder_steps,
                               steps_per_epoch * section.encoder_steps)
  decoder_opt = make_optimizer(section, config.train.num_steps, steps_per_epoch)
  eval_seed = config.eval.binarization_seed

  def encode(eta, x, xi, dropout_key=None):
    """z = f_eta(x, xi); a ``dropout_key`` (training, ``encoder_dropout`` > 0) drops hidden
    units with one mask per example, shared by its particles (``NoiseMLPEncoder``)."""
    if dropout_key is None:
      return encoder.apply(eta, x, xi)
    return encoder.apply(eta, x, xi, dropout_key)

  def log_likelihood_x(thetas, x, z):
    """log p(x | z) averaged over decoder samples: x [B, 1, P] or [B, P]-broadcastable."""
    def one(theta):
      return likelihoods.bernoulli_log_prob(x, decoder.apply(theta, z)).sum(-1)
    if num_decoders == 1:
      return one(thetas)
    return jnp.mean(jax.vmap(one)(thetas), axis=0)

  def log_joint(thetas, x, z):
    log_prior = likelihoods.gaussian_log_prob(z, 0.0, 0.0).sum(-1)
    return log_likelihood_x(thetas, x, z) + log_prior

  def log_q_codes(eta, x, xi):
    """Codes and change-of-variables log q for x [B, P], xi [B, M, D] -> ([B, M, D], [B, M])."""
    def per(x_n, xi_nm):
      return change_of_variables_log_q(lambda e: encode(eta, x_n, e), xi_nm)
    return jax.vmap(jax.vmap(per, in_axes=(None, 0)))(x, xi)

  def init(key, batch):
    enc_key, dec_key = jax.random.split(key)
    x = flatten(batch["x"])
    eta = encoder.init(enc_key, x[:1], jnp.zeros((1, latent_dim)))
    dummy_z = jnp.zeros((1, latent_dim))
    if num_decoders == 1:
      theta = decoder.init(dec_key, dummy_z)
    else:
      theta = jax.vmap(lambda k: decoder.init(k, dummy_z))(jax.random.split(dec_key, num_decoders))
    params = {"encoder": eta, "decoder": theta}
    opt_state = {"encoder": encoder_opt.init(eta), "decoder": decoder_opt.init(theta)}
    if semi:
      params["label_decoder"] = label_decoder.init(jax.random.fold_in(key, 1), dummy_z)
      opt_state["label_decoder"] = decoder_opt.init(params["label_decoder"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)

  def fit_encoder(eta, opt_state, x, xi, targets, codes, pullback, dropout_key=None,
                  metric_cholesky=None, weights=None):
    """K Adam steps on (4.13) towards the moved particles (with ``entropy_weight``, plus the
    entropy term; with ``metric_cholesky``, the errors measured by Q; ``weights`` [B, M], the
    VIWAE's normalized importance weights, weigh the entropy term's particles by ``M w``
    under ``entropy_weights='importance'``).

    With all M particles the first step's gradient comes from ``pullback``, the
    VJP of the forward pass that produced ``codes = f_eta(x, xi)`` at this eta
    (step 1 of the algorithm), so a step runs the encoder forward K times in
    all, not K + 1. With ``encoder_fit_particles = m < M`` (``pullback`` None)
    every step fits the first m particles, the loss scaled by M / m: an unbiased
    estimate of (4.13) and its gradient, whose backward pass is m / M the size.
    """
    scale = num_particles / fit_particles
    move_length = svgd_steps * section.svgd_step_size  # T eps: the fit's target lies T moves on

    def adam(eta, opt_state, grads):
      return adam_step(encoder_opt, eta, opt_state, grads)

    fit_xi, fit_targets = xi[:fit_particles], targets[:, :fit_particles]

    def fit_loss(e):  # the codes' dropout masks again
      return scale * encoder_fit_loss(lambda a, b: encode(e, a, b, dropout_key), x, fit_xi,
                                      fit_targets, metric_cholesky)

    def entropy_loss(e):
      """(-lambda T eps E_n E_j log|det df/dxi_j| on m particles: -lambda T eps E_n H(q_n) up
      to a constant, T = ``svgd_steps``; the mean log|det|)."""
      log_det = log_abs_det_jacobian(lambda noise: encode(e, x[:, None, :], noise, dropout_key),
                                     xi[None, :entropy_particles])
      return (-entropy_weight * move_length * weighted_mean_log_det(log_det, weights),
              jnp.mean(log_det))

    def one_step(carry, _):
      loss, grads = jax.value_and_grad(fit_loss)(carry[0])
      if entropy_weight:
        grads = optax.tree_utils.tree_add(grads, jax.grad(lambda e: entropy_loss(e)[0])(carry[0]))
      return adam(*carry, grads), loss

    if pullback is None:
      first_loss, first_grads = jax.value_and_grad(fit_loss)(eta)
    else:  # the gradient of (4.13) in the codes, pulled back to eta
      first_loss, codes_grad = jax.value_and_grad(codes_fit_loss)(codes, fit_targets,
                                                                  metric_cholesky)
      (first_grads,) = pullback(codes_grad)
    log_det = None
    if entropy_weight:
      (_, log_det), entropy_grads = jax.value_and_grad(entropy_loss, has_aux=True)(eta)
      first_grads = optax.tree_utils.tree_add(first_grads, entropy_grads)
    eta, opt_state = adam(eta, opt_state, first_grads)
    (eta, opt_state), losses = jax.lax.scan(one_step, (eta, opt_state), None,
                                            length=section.encoder_steps - 1)
    return eta, opt_state, jnp.concatenate([first_loss[None], losses]), log_det

  def decoder_gradients(thetas, x, z, weights):
    """Descent directions for theta: gradient of (4.1), or minus its SVGD direction (4.11).

    One decoder (M_theta = 1) is a maximum-likelihood point estimate: the gradient of
    (4.1) carries no log p(theta), as the VAE baseline's does not (with N of order 5e4
    the prior's pull, a weight decay of 1 / (N prior_std^2), is negligible). Several
    decoders follow (4.11) with the Gaussian prior; under ``importance_weighted`` their
    scores average the codes by the weights of (4.40) but the SVGD over the decoders
    is the unweighted (4.11), as each decoder sample is one particle of q(theta)."""
    def neg_log_lik(theta):
      log_px = likelihoods.bernoulli_log_prob(x[:, None, :], decoder.apply(theta, z)).sum(-1)
      return -jnp.mean(jnp.sum(weights * log_px, axis=1))
    if num_decoders == 1:
      return jax.grad(neg_log_lik)(thetas)
    scale = spec.num_train  # log p~(theta; D) ~ N/B sum_n ...
    def log_posterior(theta):
      prior = sum(jnp.sum(likelihoods.gaussian_log_prob(w, 0.0, 2 * jnp.log(section.prior_std)))
                  for w in jax.tree_util.tree_leaves(theta))
      return -scale * neg_log_lik(theta) + prior
    scores = jax.vmap(jax.grad(log_posterior))(thetas)
    direction = svgd.tree_svgd_direction(thetas, scores)
    return jax.tree_util.tree_map(lambda d: -d / scale, direction)

  def precision_cholesky(thetas, z):
    """None, or [B, D, D] Cholesky factors of the Gauss-Newton precision at each example's
    mean particle, averaged over decoder samples."""
    if preconditioner == "none":
      return None
    def one(z_mean):
      if num_decoders == 1:
        return gauss_newton_precision(lambda c: decoder.apply(thetas, c), z_mean)
      return jnp.mean(jax.vmap(lambda t: gauss_newton_precision(
          lambda c: decoder.apply(t, c), z_mean))(thetas), axis=0)
    return jnp.linalg.cholesky(jax.vmap(one)(jnp.mean(z, axis=1)))

  def label_term(theta_tilde, z, labels, label_weights):
    """``zeta log p(y | z, theta~)`` of (4.54) per particle (0 on unlabeled rows) and its VJP."""
    return jax.vjp(lambda t, c: semi_supervised.label_log_prob(
        lambda code: label_decoder.apply(t, code), c, labels, label_weights), theta_tilde, z)

  def train_step(state, batch, key):
    binarize_key, noise_key = jax.random.split(key)
    eta, thetas = state.params["encoder"], state.params["decoder"]
    x = transforms.dynamic_binarize(binarize_key, flatten(batch["x"]))  # [B, P]
    if semi:  # unlabeled rows first, then the labeled pairs (4.4)
      x_labeled = transforms.dynamic_binarize(jax.random.fold_in(binarize_key, 1),
                                              flatten(batch["x_labeled"]))
      x, labels, label_weights = semi_supervised.merged_batch(
          x, x_labeled, batch["label_labeled"], num_pixels, semi.num_classes)
    xi = jax.random.normal(noise_key, (num_particles, latent_dim))  # shared across examples (4.5)
    dropout_key = jax.random.fold_in(key, 2) if dropout_rate else None
    if fit_particles == num_particles:  # keep the VJP: the fit's first gradient reuses it
      z, encoder_pullback = jax.vjp(
          lambda e: encode(e, x[:, None, :], xi[None], dropout_key), eta)  # [B, M, D]
    else:
      z, encoder_pullback = encode(eta, x[:, None, :], xi[None], dropout_key), None
    if semi:
      label_log_p, label_pullback = label_term(state.params["label_decoder"], z, labels,
                                               label_weights)
      _, label_scores = label_pullback(jnp.ones_like(label_log_p))
    if section.importance_weighted:
      log_p, scores = latent_scores(lambda c: log_joint(thetas, x[:, None, :], c), z)
      # The weights (4.40) of labeled codes see log p(x, z) + zeta log p(y | z): the joint
      # tempered by zeta, as in the scores (4.54) that move them.
      if semi:
        log_p, scores = log_p + label_log_p, scores + label_scores
      _, log_q = log_q_codes(eta, x, jnp.broadcast_to(xi, z.shape))
      log_w = jax.lax.stop_gradient(bounds.log_weights(log_p, log_q))
      weights = bounds.normalized_weights(log_w, axis=1)
      decoder_grads = decoder_gradients(thetas, x, z, weights)
    elif decoder_codes == "moved":  # the scores alone now; the decoder after the moves
      log_w = None
      weights = jnp.full(z.shape[:2], 1.0 / num_particles)
      _, scores = latent_scores(lambda c: log_joint(thetas, x[:, None, :], c), z)
    else:
      log_w = None
      weights = jnp.full(z.shape[:2], 1.0 / num_particles)
      # log_p: [B, m] at the particles of the decoder's gradient (all M by default)
      log_p, scores, decoder_grads = scores_and_decoder_gradients(thetas, x, z)
      if semi:
        log_p, scores = log_p + label_log_p[:, :log_p.shape[1]], scores + label_scores
    cholesky = precision_cholesky(thetas, z)
    moved, bandwidth = svgd_moves(thetas, x, z, scores, log_w, cholesky)
    if decoder_codes == "moved":  # the gradient of (4.1) at the moved particles
      log_p, decoder_grads = moved_decoder_gradients(thetas, x, moved)
    eta, enc_opt_state, fit_losses, log_det = fit_encoder(
        eta, state.opt_state["encoder"], x, xi, moved, z, encoder_pullback, dropout_key,
        cholesky if fit_metric == "precision" else None,
        weights if entropy_weights == "importance" else None)
    thetas, dec_opt_state = adam_step(decoder_opt, thetas, state.opt_state["decoder"],
                                      decoder_grads)
    params = {"encoder": eta, "decoder": thetas}
    opt_state = {"encoder": enc_opt_state, "decoder": dec_opt_state}
    if log_w is None:  # uniform weights: the decoder's gradient particles estimate the mean
      loss = -jnp.mean(log_p)
    else:
      loss = -jnp.mean(jnp.sum(weights * log_p, axis=1))
    metrics = {
        "loss": loss,
        "encoder_fit": fit_losses[0],
        "kernel_bandwidth": jnp.mean(bandwidth),
        "particle_move": jnp.mean(jnp.linalg.norm(moved - z, axis=-1)),
    }
    if semi:  # theta~ ascends (4.51): the weighted label log-likelihood of the labeled codes
      label_grads, _ = label_pullback(-weights / x.shape[0])
      params["label_decoder"], opt_state["label_decoder"] = adam_step(
          decoder_opt, state.params["label_decoder"], state.opt_state["label_decoder"],
          label_grads)
      metrics["label_nll"] = -jnp.sum(weights * label_log_p) / jnp.sum(label_weights)
    if log_det is not None:  # E log|det df/dxi|: q's entropy less H(q0) (4.5.2)
      metrics["encoder_log_det"] = log_det
    if section.importance_weighted:
      metrics["effective_sample_size"] = jnp.mean(bounds.effective_sample_size(log_w, axis=1))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def svgd_moves(thetas, x, z, scores, log_w, cholesky):
    """``svgd_steps`` = T SVGD moves (4.12) of every example's particles from z, whose
    scores are given; each later move takes the scores at the particles it starts from.
    The preconditioner's factors (``cholesky``, or None) stay those of z for all T.

    Returns:
      (moved particles [B, M, D], bandwidths [B] averaged over the T moves).
    """
    def move(codes, code_scores):
      return svgd_move(codes, code_scores, section.svgd_step_size, log_w,
                       section.bandwidth_convention, repulsion_scale, kernel, cholesky)

    moved, bandwidth = move(z, scores)
    if svgd_steps == 1:  # the dissertation's one move per iteration
      return moved, bandwidth

    def again(codes, _):
      _, code_scores = latent_scores(lambda c: log_joint(thetas, x[:, None, :], c), codes)
      return move(codes, code_scores)

    moved, bandwidths = jax.lax.scan(again, moved, None, length=svgd_steps - 1)
    return moved, (bandwidth + jnp.sum(bandwidths, axis=0)) / svgd_steps

  def moved_decoder_gradients(thetas, x, moved):
    """(log p(x, z') [B, m], the decoder's descent direction): the gradient of (4.1) at the
    first m = ``decoder_grad_particles`` moved particles (``decoder_codes='moved'``)."""
    subset = moved[:, :grad_particles]
    log_p, vjp = jax.vjp(lambda t: log_joint(t, x[:, None, :], subset), thetas)
    (theta_grads,) = vjp(jnp.full_like(log_p, -1.0 / log_p.size))
    return log_p, theta_grads

  def scores_and_decoder_gradients(thetas, x, z):
    """One backward pass gives the z-scores (4.12) and the theta-gradient of (4.1).

    The decoder's gradient is taken at the codes of this iteration, z^(t), so it
    shares the pass that the scores need anyway; with several decoder samples it
    falls back to the SVGD update of (4.11). With ``decoder_grad_particles = m``
    (0 < m < M) the gradient of (4.1) averages over m particles per example
    instead of M, in a second pass of m / M the size: for large M most of the
    decoder's parameter-gradient cost goes, at the price of a noisier
    (still unbiased) estimate.

    Returns:
      (log p(x, z) [B, m] at the gradient's m particles, scores [B, M, D], the
      decoder's descent direction). The scores' own pass then never computes
      log p(x, z), only its gradient (``likelihoods.softplus``).
    """
    if num_decoders > 1 or grad_particles < num_particles:
      log_p, scores = latent_scores(lambda c: log_joint(thetas, x[:, None, :], c), z)
      # The particles are exchangeable (i.i.d. xi), so the first m give an unbiased
      # estimate of the gradient of (4.1) in its own, cheaper pass.
      subset = z[:, :grad_particles]
      if grad_particles < num_particles:  # the scores' pass then drops its log p values
        log_p = log_joint(thetas, x[:, None, :], subset)
      uniform = jnp.full(subset.shape[:2], 1.0 / grad_particles)
      return log_p, scores, decoder_gradients(thetas, x, subset, uniform)
    log_p, vjp = jax.vjp(lambda t, c: log_joint(t, x[:, None, :], c), thetas, z)
    theta_grads, scores = vjp(jnp.ones_like(log_p))
    scale = -1.0 / (z.shape[0] * z.shape[1])  # descent direction of the mean negative log-joint
    return log_p, scores, jax.tree_util.tree_map(lambda g: scale * g, theta_grads)

  def eval_x(batch):
    return transforms.static_binarize(flatten(batch["x"]), batch["index"], eval_seed)

  def log_weights(params, x, key, num):
    """[num, B] log p(x, z) - log q(z | x) with fresh xi per example and sample."""
    xi = jax.random.normal(key, (x.shape[0], num, latent_dim))
    z, log_q = log_q_codes(params["encoder"], x, xi)
    return jnp.swapaxes(bounds.log_weights(log_joint(params["decoder"], x[:, None, :], z), log_q),
                        0, 1)

  def eval_step(params, batch, key):
    x = eval_x(batch)
    # The ELBO with the entropy by the change of variables (4.5.2): the weights' mean.
    metrics = {"elbo_nats": jnp.mean(log_weights(params, x, key, section.eval_elbo_samples),
                                     axis=0)}
    if semi:  # argmax_y of p(y | z) averaged over the codes of eval_elbo_samples xi
      xi = jax.random.normal(jax.random.fold_in(key, 1), (section.eval_elbo_samples, latent_dim))
      z = encode(params["encoder"], x[:, None, :], xi[None])
      metrics["error_rate"] = semi_supervised.prediction_errors(
          label_decoder.apply(params["label_decoder"], z), batch["label"])
    return metrics

  def log_likelihood(params, batch, key, num_samples):
    x = eval_x(batch)
    chunk = nll.chunk_size_for(num_samples, config.eval.max_chunk)
    return nll.importance_log_likelihood(lambda k, n: log_weights(params, x, k, n), key,
                                         num_samples, chunk)

  def laplace_log_likelihood(params, batch, key, num_samples):
    x = eval_x(batch)
    z_init = encoder_mean(params, batch)
    return nll.batched_laplace_log_likelihood(
        lambda x_n, z: log_joint(params["decoder"], x_n, z), x, z_init, key, num_samples,
        config.eval.max_chunk)

  def posterior_shape(params, batch, key, num_samples):
    x = eval_x(batch)
    xi = jax.random.normal(key, (x.shape[0], num_samples, latent_dim))
    z, log_q = log_q_codes(params["encoder"], x, xi)  # [B, S, D], [B, S]
    return shape.batched_shape_mismatch(
        lambda x_n, c: log_joint(params["decoder"], x_n, c), x, z, log_q)

  def decode_mean(thetas, z):
    if num_decoders == 1:
      return jax.nn.sigmoid(decoder.apply(thetas, z))
    return jnp.mean(jax.vmap(lambda t: jax.nn.sigmoid(decoder.apply(t, z)))(thetas), axis=0)

  def sample(params, key, num):
    z = jax.random.normal(key, (num, latent_dim))
    return decode_mean(params["decoder"], z).reshape((num,) + tuple(spec.shape))

  def reconstruct(params, batch, key):
    x = eval_x(batch)
    xi = jax.random.normal(key, (x.shape[0], latent_dim))
    z = encode(params["encoder"], x, xi)
    return decode_mean(params["decoder"], z).reshape(batch["x"].shape)

  def encoder_mean(params, batch):
    x = eval_x(batch)
    xi = jax.random.normal(jax.random.PRNGKey(0), (16, 1, latent_dim))
    return jnp.mean(encode(params["encoder"], x[None], xi), axis=0)

  name = "stein_viwae" if section.importance_weighted else "stein_vae"
  return Method(name=name, init=init, train_step=train_step, eval_step=eval_step,
                log_likelihood=log_likelihood, sample=sample, reconstruct=reconstruct,
                encoder_mean=encoder_mean, laplace_log_likelihood=laplace_log_likelihood,
                posterior_shape=posterior_shape, semi_supervised=semi)


def make_nets(section, spec):
  """f_eta(x, xi) and the decoder's logits: MLPs, or the all-convolutional nets of 4.5.3.

  ``encoder_arch='conv'``: ``NoiseConvEncoder`` (5x5 stride-2 convolutions with
  ``encoder_conv_features`` channels on the image stacked with a noise map);
  ``decoder_arch='conv'``: ``nets.conv.ConvDecoder``, a dense layer to a feature map
  and stride-2 transposed convolutions with ``decoder_conv_features`` channels.
  """
  latent_dim, act = section.latent_dim, section.activation
  if section.get("encoder_arch", "mlp") == "conv":
    encoder = NoiseConvEncoder(tuple(spec.shape), latent_dim,
                               tuple(section.encoder_conv_features), act,
                               section.get("conv_kernel_size", 5))
  else:
    encoder = NoiseMLPEncoder(tuple(section.encoder_hidden), latent_dim, act,
                              section.get("encoder_dropout", 0.0),
                              section.get("encoder_output", "mlp"))
  if section.get("decoder_arch", "mlp") == "conv":
    decoder = conv.decoder_from_section(section, spec.shape, 1)
  else:
    decoder = MLP(tuple(section.decoder_hidden), int(np.prod(spec.shape)), act)
  return encoder, decoder


def adam_step(optimizer, params, opt_state, grads):
  """One optimizer update: (params, opt_state)."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def flatten(x):
  """[B, H, W, C] -> [B, H*W*C]."""
  return x.reshape(x.shape[0], -1)
