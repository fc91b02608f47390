"""Adversarial objectives of ALI and the Adversarial Symmetric VAE (chapter 5).

Section 5.1 and 5.2 of the dissertation: the ALI objective (5.1), the two
discriminator objectives (5.3)-(5.4) of Corollary 8 with their optimal logits
(5.5), and the AS-VAE pair terms of the cumulative bound (5.14) that (5.15)
re-expresses with reparametrized samples. A discriminator is a logit
``f(x, z)`` with ``D = sigmoid(f)``; maximizing ``E_real log sigmoid(f) +
E_fake log(1 - sigmoid(f))`` is minimizing the binary cross-entropy
``softplus(-f(real)) + softplus(f(fake))``, whose pointwise minimizer is
``f* = log p_real - log p_fake`` (Lemma 7). Signs of the AS-VAE terms are
derived from Lemma 7 and Corollary 8, not copied from (5.15), which prints the
negative of (5.14) (see ``asvae_encoder_pair_term``). Everything is
per-example and unreduced; means over a batch belong to the caller.
"""

import jax
import jax.numpy as jnp

__all__ = [
    "discriminator_loss",
    "psi1_loss",
    "psi2_loss",
    "ali_discriminator_loss",
    "ali_generator_loss",
    "asvae_encoder_pair_term",
    "asvae_decoder_pair_term",
    "optimal_logit",
    "logits_and_input_gradient_sq",
    "negative_pair_term",
]


def discriminator_loss(logits_real, logits_fake):
  """Per-example binary cross-entropy of a logit discriminator.

  ``softplus(-f(real)) + softplus(f(fake))`` equals
  ``-[log sigmoid(f(real)) + log(1 - sigmoid(f(fake)))]``, the negative of the
  integrand of (5.2), computed without forming ``sigmoid``: it is finite for
  any finite logit. Its expectation ``E_real softplus(-f) + E_fake softplus(f)``
  is minimized pointwise by ``f* = log p_real - log p_fake`` (Lemma 7), with
  minimum ``2 log 2 - 2 JS(p_real, p_fake)``.

  Args:
    logits_real: [B] logits ``f`` on samples from the "real" distribution
      (the one ``sigmoid(f)`` should call 1).
    logits_fake: [B] logits on samples from the "fake" distribution, or any
      shape broadcastable with ``logits_real`` (``[B, 1]`` against ``[B']``
      gives all B x B' pairs). With unequal batch sizes, average
      ``jax.nn.softplus(-logits_real)`` and ``jax.nn.softplus(logits_fake)``
      separately instead.

  Returns:
    [B] loss per pair (real example i, fake example i), to be averaged by the
    caller; an unbiased estimate of the negative objective (5.2).
  """
  return jax.nn.softplus(-logits_real) + jax.nn.softplus(logits_fake)


def psi1_loss(logits_encoder_pairs, logits_decoder_x_prior_z_pairs):
  """Loss of the discriminator f_psi1 of (5.3), to minimize wrt psi1.

  Real pairs are encoder pairs from q_phi(x, z) = q(x) q_phi(z|x): a data
  point ``x ~ q(x)`` with its code ``z ~ q_phi(z|x)``. Fake pairs are
  ``(x, z)`` with ``x ~ p_theta(x|z')``, ``z' ~ p(z)``, and an *independent*
  ``z ~ p(z)``; by (5.6)-(5.9) they are drawn from the product of marginals
  p_theta(x) p(z). (In a batch: decode prior draws ``z'`` and pair each decoded
  ``x`` with a fresh prior draw, not with its own ``z'``.) The optimum (5.5) is
  ``f_psi1* = log q_phi(x, z) - log p_theta(x) p(z)``; (5.11) prints a ``+``
  where this minus belongs.

  Args:
    logits_encoder_pairs: [B] ``f_psi1(x, z)``, x ~ q(x), z ~ q_phi(z|x).
    logits_decoder_x_prior_z_pairs: [B] ``f_psi1(x, z)``, x ~ p_theta(x), z ~
      p(z) independent of x.

  Returns:
    [B] the negative of the integrand of L_A1 in (5.3).
  """
  return discriminator_loss(logits_encoder_pairs, logits_decoder_x_prior_z_pairs)


def psi2_loss(logits_decoder_pairs, logits_data_x_aggregate_z_pairs):
  """Loss of the discriminator f_psi2 of (5.4), to minimize wrt psi2.

  Real pairs are decoder pairs from p_theta(x, z) = p(z) p_theta(x|z): ``z ~
  p(z)`` with its decoded ``x ~ p_theta(x|z)``. Fake pairs are ``(x, z)`` with
  ``x ~ q(x)`` a data point and ``z ~ q_phi(z|x')`` the code of an
  *independent* data point ``x' ~ q(x)``, i.e. draws from q(x) q_phi(z) with
  q_phi(z) the aggregated posterior. (In a batch: pair each data point with
  the code of another one, e.g. a rolled batch of codes.) The optimum (5.5) is
  ``f_psi2* = log p_theta(x, z) - log q_phi(z) q(x)``.

  Args:
    logits_decoder_pairs: [B] ``f_psi2(x, z)``, z ~ p(z), x ~ p_theta(x|z).
    logits_data_x_aggregate_z_pairs: [B] ``f_psi2(x, z)``, x ~ q(x), z ~
      q_phi(z) independent of x.

  Returns:
    [B] the negative of the integrand of L_A2 in (5.4).
  """
  return discriminator_loss(logits_decoder_pairs, logits_data_x_aggregate_z_pairs)


def ali_discriminator_loss(logits_q, logits_p):
  """Loss of the ALI discriminator (5.1), to minimize wrt psi.

  (5.1) maximizes ``E_q(x,z) log sigmoid(f) + E_p(x,z) log(1 - sigmoid(f))``,
  so encoder pairs of q_phi(x, z) = q(x) q_phi(z|x) are "real" and decoder
  pairs of p_theta(x, z) = p(z) p_theta(x|z) are "fake"; the optimum is
  ``f* = log q_phi(x, z) - log p_theta(x, z)`` (Lemma 7).

  Args:
    logits_q: [B] ``f(x, z)`` on encoder pairs, x ~ q(x), z ~ q_phi(z|x).
    logits_p: [B] ``f(x, z)`` on decoder pairs, z ~ p(z), x ~ p_theta(x|z).

  Returns:
    [B] the negative of the integrand of (5.1).
  """
  return discriminator_loss(logits_q, logits_p)


def ali_generator_loss(logits_q, logits_p, non_saturating=False):
  """Loss of the ALI encoder and decoder (theta, phi), to minimize.

  With ``non_saturating=False`` this is the integrand of (5.1) itself, which
  (theta, phi) minimize: ``-softplus(-f_q) - softplus(f_p)``, the exact
  negative of ``ali_discriminator_loss``. Its gradient vanishes where the
  discriminator is confident (``sigmoid(f_p) -> 0``), which stalls early
  training. ``non_saturating=True`` swaps the labels instead, as Goodfellow et
  al. (2014) and the ALI implementation do: ``softplus(f_q) +
  softplus(-f_p)``, i.e. (theta, phi) maximize ``E_q log(1 - sigmoid(f)) +
  E_p log sigmoid(f)``. The gradients of the two wrt each logit have the same
  sign (both push ``f_q`` down and ``f_p`` up); only the magnitudes differ.

  Args:
    logits_q: [B] ``f(x, z)`` on encoder pairs.
    logits_p: [B] ``f(x, z)`` on decoder pairs.
    non_saturating: a Python bool (static under ``jit``).

  Returns:
    [B] generator loss per pair.
  """
  if non_saturating:
    return discriminator_loss(logits_p, logits_q)
  return -discriminator_loss(logits_q, logits_p)


def asvae_encoder_pair_term(log_px_given_z, f_psi1):
  """The encoder-pair term of the AS-VAE bound (5.14): ``log p(x|z) - f_psi1``.

  Evaluated on encoder pairs x ~ q(x), z = z_phi(x, eps) ~ q_phi(z|x). With
  the optimal discriminator of (5.3), ``f_psi1* = log q_phi(x, z) - log
  p_theta(x) p(z)``, the density ratio of encoder pairs to (decoded x,
  independent prior z) pairs (Lemma 7, Corollary 8), the term is

    log p_theta(x|z) + log p_theta(x) + log p(z) - log q(x) - log q_phi(z|x)
      = log p_theta(x) - log [q_phi(x, z) / p_theta(x, z)],

  whose expectation under q_phi(x, z) is exactly
  ``L_VAEx = E_q(x) log p_theta(x) - KL(q_phi(x,z) || p_theta(x,z))`` of (5.12),
  i.e. ``E_q log q(x) - KL(q(x) || p_theta(x)) - KL(q_phi(x,z) || p_theta(x,z))``
  (5.18): up to the data entropy, a negative sum of KLs, and a lower bound on
  ``E_q(x) log p_theta(x)``. Hence the mean of this term is an unbiased
  estimate of L_VAEx, which (theta, phi) *maximize* (minimize its negative).
  (5.15) as printed, ``f_psi1 - log p(x|z)``, is the negative of this term;
  it is the loss, not the bound.

  Args:
    log_px_given_z: [B] ``log p_theta(x_i | z_i)`` (summed over pixels).
    f_psi1: [B] ``f_psi1(x_i, z_i)`` on the same encoder pairs.

  Returns:
    [B] per-example estimate of L_VAEx (to maximize).
  """
  return log_px_given_z - f_psi1


def asvae_decoder_pair_term(log_qz_given_x, f_psi2):
  """The decoder-pair term of the AS-VAE bound (5.14): ``log q(z|x) - f_psi2``.

  Evaluated on decoder pairs z ~ p(z), x = x_theta(z, xi) ~ p_theta(x|z).
  (5.14) prints ``log q_phi(x|z)``; the encoder density is q_phi(z|x). With
  the optimal discriminator of (5.4), ``f_psi2* = log p_theta(x, z) - log
  q(x) q_phi(z)``, the density ratio of decoder pairs to (data x, independent
  aggregated-posterior z) pairs, the term is

    log q_phi(z|x) + log q(x) + log q_phi(z) - log p(z) - log p_theta(x|z)
      = log q_phi(z) - log [p_theta(x, z) / q_phi(x, z)],

  whose expectation under p_theta(x, z) is exactly
  ``L_VAEz = E_p(z) log q_phi(z) - KL(p_theta(x,z) || q_phi(x,z))`` of (5.13),
  i.e. ``E_p log p(z) - KL(p(z) || q_phi(z)) - KL(p_theta(x,z) || q_phi(x,z))``
  (5.20): up to the prior entropy, a negative sum of KLs. Hence the mean of
  this term is an unbiased estimate of L_VAEz, which (theta, phi) maximize;
  (5.15) as printed is its negative.

  Args:
    log_qz_given_x: [B] ``log q_phi(z_i | x_i)`` (summed over latent dims).
    f_psi2: [B] ``f_psi2(x_i, z_i)`` on the same decoder pairs.

  Returns:
    [B] per-example estimate of L_VAEz (to maximize).
  """
  return log_qz_given_x - f_psi2


def negative_pair_term(f_negatives):
  """``log mean_i exp f(x_i, z_i)`` over a discriminator's negatives (not in the dissertation).

  (5.14) holds the discriminators fixed, and its gradient then misses the
  players that sit in the *denominators* of their optima (5.5). ``f_psi1* = log
  q_phi(x, z) - log p_theta(x) p(z)`` holds the decoder in ``p_theta(x)``, and
  ``f_psi2* = log p_theta(x, z) - log q(x) q_phi(z)`` holds the encoder in
  ``q_phi(z)``. (The players in the numerators cost nothing: the expectation is
  over the numerator itself, and ``E_q[d log q_phi] = 0``.) The missing
  gradients are exact pathwise expectations over the negatives:

    - of ``-E_q(x,z)[f_psi1*]`` in theta: ``E_q(x)[d log p_theta(x)] =
      d_theta E[exp f_psi1*(x_theta(z', xi), z)]`` over (5.3)'s negatives,
      since ``q(x) / p_theta(x) = E_p(z)[exp f_psi1*(x, z)]``;
    - of ``-E_p(x,z)[f_psi2*]`` in phi: ``E_p(z)[d log q_phi(z)] =
      d_phi E[exp f_psi2*(x, z_phi(x', eps))]`` over (5.4)'s negatives,
      since ``p(z) / q_phi(z) = E_q(x)[exp f_psi2*(x, z)]``.

  At the optimum ``E[exp f*] = 1`` over the negatives. This term divides by the
  batch's own estimate of it: ``log mean exp f``, whose gradient is
  ``sum_i softmax(f)_i grad f_i``. That is the same gradient at the optimum. Away
  from it, the total weight stays 1 where a saturated discriminator gives
  ``exp f ~ 0``.
  Added to (5.14) (to maximize), with the discriminator's parameters fixed.

  Args:
    f_negatives: [B] logits on the negative pairs, differentiable in the player.

  Returns:
    Scalar.
  """
  return jax.nn.logsumexp(f_negatives) - jnp.log(f_negatives.shape[0])


def optimal_logit(log_p_real, log_p_fake):
  """The optimal discriminator logit of Lemma 7: ``log p_real - log p_fake``.

  Args:
    log_p_real: [...] log-density of the "real" distribution at the points.
    log_p_fake: [...] log-density of the "fake" distribution at the points.

  Returns:
    [...] ``f*``, with ``sigmoid(f*) = p_real / (p_real + p_fake)``.
  """
  return jnp.asarray(log_p_real) - jnp.asarray(log_p_fake)


def logits_and_input_gradient_sq(logit_fn, x, z):
  """A discriminator's logits and their per-example ``|grad_x f|^2 + |grad_z f|^2``, one pass.

  Not in the dissertation. Added to a discriminator's loss as ``gamma / 2`` times its
  mean over real and fake pairs (R1 and R2 of Mescheder, Geiger and Nowozin 2018),
  the squared norm keeps the discriminator from winning outright with a logit that
  is steep between the two sets of pairs; its pointwise optimum (5.5) is unchanged
  where the two densities overlap.

  Args:
    logit_fn: ``(x [B, ...], z [B, D]) -> [B]``, each logit depending on its own row.
    x: [B, ...].
    z: [B, D].

  Returns:
    ([B] logits, [B] squared gradient norms); gradients flow to the discriminator's
    parameters through both.
  """
  logits, vjp = jax.vjp(logit_fn, x, z)
  grad_x, grad_z = vjp(jnp.ones_like(logits))
  return logits, (jnp.sum(jnp.square(grad_x).reshape(x.shape[0], -1), axis=1)
                  + jnp.sum(jnp.square(grad_z), axis=1))
