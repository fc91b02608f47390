"""The Adversarial Symmetric VAE (section 5.2) and the ALI baseline (5.1).

Both methods share one harness on binarized (or 8-bit) images: a reparametrized encoder
``z = z_phi(x, eps)`` (a diagonal Gaussian, optionally pushed through a stack of
planar flows, section 5.3) and a reparametrized decoder ``x = x_theta(z, xi)``.

The AS-VAE (``method='asvae'``) trains two discriminators by (5.3) and (5.4),
whose optima (5.5) are ``f_psi1* = log q_phi(x, z) - log p_theta(x) p(z)`` and
``f_psi2* = log p_theta(x, z) - log q(x) q_phi(z)``, and the encoder and decoder
by maximizing (5.14),
``E_q(x,z)[log p(x|z) - f_psi1] + E_p(x,z)[log q(z|x) - f_psi2]`` (the signs
are derived in ``dgm_jax.adversarial``; (5.15) prints the negative). Variants
(``asvae.variant``): ``'full'``; ``'r'`` (AS-VAE-r, only the encoder-pair half
L_VAEx (5.12), with f_psi1 alone); ``'g'`` (AS-VAE-g, only the decoder-pair half
L_VAEz (5.13), with f_psi2 alone). ALI (``method='ali'``) trains one joint
discriminator by (5.1) and the encoder and decoder adversarially only.

Sampling x_theta for binary pixels: a Bernoulli draw is not differentiable in
theta, so ``x_theta(z, xi) = sigmoid((logits_theta(z) + xi) / tau)`` with
``xi ~ Logistic(0, 1)``, the binary Concrete (Gumbel-sigmoid) relaxation of
Bernoulli(sigmoid(logits)) at temperature ``tau`` (``relaxation_temperature``),
which becomes the Bernoulli draw as tau -> 0. Such samples are never exactly 0
or 1, so a discriminator shown binary data could separate data from decoded
images by binariness alone. Training data are therefore binarized by the same
construction: with ``l ~ Logistic(0, 1)`` per pixel and gray level g, the
binary image ``1[logit(g) + l > 0]`` (an exact Bernoulli(g) draw) feeds the
encoder and ``log p(x|z)``, and its relaxed twin ``sigmoid((logit(g) + l) /
tau)`` is the x the discriminators see, so both sides of every discriminator
live in the same relaxed pixel space. The encoder's density on decoder pairs,
``log q_phi(z | x_theta)`` in (5.14), is evaluated at the relaxed x
(``decoder_pair_encoder_input='relaxed'``, the default), whose pathwise gradient
reaches the decoder. ``'binary'`` evaluates it at the binary twin ``1[logits + xi
> 0]``, the Bernoulli draw x ~ p_theta(x|z) itself, the kind of image q_phi is
trained on in the other half; the decoder's gradient through the term is then not
estimated (a step function of the noise). ``'straight_through'`` reads the binary
twin but passes the relaxed sample's gradient (straight-through Gumbel);
``'score_function'`` reads two Bernoulli draws and gives the decoder their
leave-one-out REINFORCE gradient (``score_function_log_q``), unbiased for the
gradient of E_{x ~ p_theta(x|z)} log q_phi(z|x). The modes move the samples'
class mix (README): every mode that gives the decoder this term's gradient makes
few 1s (1-2% of samples; 11% of the test images are 1s), since a 1 says little
about z; without it ('binary') a discriminator that wins outright pulls towards
them (20-43%). With ``disc_gradient_penalty`` (R1 + R2) keeping the discriminators
from winning, 'binary' makes even classes and confident samples, and AS-VAE-g
trains: that pair is configs/mnist.py's default (not under ``:paper``).

8-bit pixels (``likelihood='discretized_logistic'``, e.g. Fashion-MNIST, section
5.3.1): the decoder outputs a logistic mean and log-scale per pixel
(``models.vae.logistic_params``), and ``x_theta(z, xi) = clip(mean + exp(log_scale)
xi, 0, 1)`` with ``xi ~ Logistic(0, 1)``: a reparametrized draw of that logistic,
clipped to the pixel range, where the open edge bins of the discretized logistic
put the mass outside it. The data side lives in the same continuous space: the
discriminators see the uniformly dequantized images ``(255 x + u) / 256``, as
5.3.1 models natural images as continuous. With ``dequantize=True`` (default)
the encoder and ``log p(x|z)`` in (5.14) also use the dequantized x, ``log p``
being the logistic density minus ``log 256`` per pixel (in expectation a lower
bound on the discrete log-probability, see ``models.vae``); with
``dequantize=False`` the encoder sees the 8-bit values and ``log p(x|z)`` is the
discretized logistic. A clipped draw can sit exactly at 0 or 1 while a
dequantized pixel never does, but the two differ by less than one bin (1/256),
below what a smooth discriminator resolves. Evaluation uses the 8-bit values and
the discretized logistic, so ``nll_nats`` is a bound on the discrete likelihood
(bits/dim); ``rmse`` compares the logistic means with the images.

``decoded_x='mean'`` (not in the dissertation; ALI's default on Fashion-MNIST)
shows the discriminators the logistic mean instead of a draw, a deterministic
generator as in ALI's own experiments. ALI learns the decoder's log-scales from
the discriminator alone; at initialization they are near 0, so a draw is the mean
plus logistic noise of scale about 1, which no data image has. The discriminator
wins on that noise within 1,000 steps (loss 0.02) and the generator collapses
(Fashion-MNIST, 5 epochs: classifier score 1.01, 113 bits/dim); with the mean the
game stays balanced (discriminator loss 0.8-0.9) and ALI scores 3.29 (README).

Networks: the encoder's Gaussian base and the decoder are MLPs
(``encoder_arch`` / ``decoder_arch`` = 'mlp', the default) or the strided
convolution stages of Figs. 5.1-5.2 ('conv', ``nets.conv``; ``configs/cifar10.py``);
both take and return flattened images, so nothing else changes.

Explicit contrast (``explicit_contrast=True``, the configs' default, off under
``:paper``; not in the dissertation): ``f_psi1(x, z) = [log q_phi(z|x) - log
p(z)] + g_psi1(x, z)``, the encoder's own log-ratio plus the network g, which
learns only the rest. The
optimum (5.5), ``f_psi1* = log q_phi(z|x) - log p(z) + log q(x) - log p_theta(x)``,
is unchanged (g* depends on x only), so the objective is too; only the estimator
changes. Why: trained by the cross-entropy of (5.3), a discriminator separates
encoder pairs from (decoded x, independent z) by the image alone, saturates, and
never learns the large, z-dependent log q(z|x) - log p(z): on MNIST f_psi1 stayed
near 7 nats while that KL grew past 160, so the encoder felt almost no entropy
pressure and narrowed. In the discriminator step the bracket is a fixed function
(gradients stopped), evaluated for decoded x at its binary twin ``x > 0.5`` and,
for the independent z, through the flow inverse; in the generator step its full
reparametrized gradient is used, which makes the encoder-pair half the ELBO
integrand minus g. This is the "adaptive contrast" of adversarial variational
Bayes (Mescheder et al., 2017) with the encoder as the contrast; it affects the
terms of f_psi1 only (AS-VAE full and -r, not -g).

Negative-pair terms (``negative_pair_terms=True``; not in the dissertation, off by
default). Holding the discriminators fixed, the gradient of (5.14) misses the
players in the denominators of the optima (5.5): the decoder's ``p_theta(x)`` in
f_psi1* and the encoder's ``q_phi(z)`` in f_psi2*. Both missing parts are
pathwise expectations over the discriminators' own negatives. With the option on,
the loss adds ``log mean exp f`` over the negatives of (5.3), which reaches the
decoder through its images, and of (5.4), which reaches the encoder through its
codes (``adversarial.negative_pair_term``). ``tests/test_adversarial.py`` checks on a
Gaussian toy that the surrogate's gradient then equals the closed-form gradient
of (5.14), and that without it the offsets' gradients are wrong. With the explicit
contrast, f_psi1's bracket ``log q_phi(z|x) - log p(z)`` at the decoded x is part of
what the decoder's images must move; for binary pixels the encoder reads their binary
twin (a step function), so that part is not estimated (``generator_loss``).

Planar flows are not invertible in closed form, but the decoder-pair term needs
``log q_phi(z|x)`` at a prior draw z; ``flows.planar_flow_stack_inverse`` inverts each
layer by bisection on its scalar equation, and one Newton step at the root
carries the implicit-function gradients. The flow parameters are shared by all
x (not amortized); the Gaussian base is amortized.

Evaluation, on one fixed binarization of each split as in ``models.vae``: the
importance-sampled NLL with the encoder as the proposal (valid for ALI too,
since its encoder has an explicit density; an adversarially trained encoder may
be a poor proposal, which shows as a loose estimate), a one-sample ELBO, and
``rmse``: per example, the root mean square over pixels between the decoder's
probabilities at the encoder's code of the binarized image (the flow applied to
the base mean) and the gray input in [0, 1], the Bernoulli means the binary
pixels were drawn from, so binarization noise does not set a floor on it.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dgm_jax import adversarial, flows, likelihoods
from dgm_jax.data import transforms
from dgm_jax.eval import nll
from dgm_jax.models.base import Method, make_optimizer
from dgm_jax.models.vae import (check_likelihood, decoder_outputs, logistic_params,
                                pixel_log_prob, pixel_mean)
from dgm_jax.nets import conv
from dgm_jax.nets.discriminators import TRUNKS, JointDiscriminator
from dgm_jax.nets.mlp import MLP, GaussianMLP
from dgm_jax.train.state import TrainState

__all__ = [
    "make_method",
    "encoder_net",
    "decoder_net",
    "asvae_generator_loss",
    "discriminator_pairs",
    "relaxed_binarize",
    "relaxed_bernoulli",
    "decoder_pair_encoder_read",
    "score_function_log_q",
    "VARIANTS",
    "DECODED_X",
    "DECODER_PAIR_ENCODER_INPUTS",
    "DISCRIMINATORS",
]

VARIANTS = ("full", "r", "g")
# x_theta(z, xi) of 8-bit data: a clipped logistic draw, or the logistic mean (module docstring).
DECODED_X = ("sample", "mean")
# x at which the decoder-pair term evaluates log q_phi(z|x) for binary pixels (module docstring).
DECODER_PAIR_ENCODER_INPUTS = ("binary", "relaxed", "straight_through", "score_function")
# The discriminators each method and variant trains; the other players are always
# "encoder" and "decoder".
DISCRIMINATORS = {
    ("asvae", "full"): ("psi1", "psi2"),
    ("asvae", "r"): ("psi1",),
    ("asvae", "g"): ("psi2",),
    ("ali", None): ("psi",),
}
# Each discriminator's metric name and loss on (real logits, fake logits): (5.3), (5.4), (5.1).
DISCRIMINATOR_LOSSES = {
    "psi1": ("d1_loss", adversarial.psi1_loss),
    "psi2": ("d2_loss", adversarial.psi2_loss),
    "psi": ("d_loss", adversarial.ali_discriminator_loss),
}


def discriminator_pairs(x_shown, z_encoder, x_decoder, noise):
  """(real pairs, fake pairs) of each discriminator, each pair (x [B, P], z [B, D]).

  ``x_decoder`` was decoded from ``noise["z_prior"]``, ``z_encoder`` encoded from
  ``x_shown``. The fakes are the product of the marginals: psi1's (5.3) pairs the
  decoded x with a fresh ``noise["z_independent"]`` (p_theta(x) p(z)), psi2's (5.4)
  the data with another example's code (q(x) q_phi(z), a cyclic shift of the batch).
  """
  return {
      # psi1 real: encoder pairs; fake: decoded x with an independent z
      "psi1": ((x_shown, z_encoder), (x_decoder, noise["z_independent"])),
      # psi2 real: decoder pairs; fake: data x with another example's code
      "psi2": ((x_decoder, noise["z_prior"]), (x_shown, jnp.roll(z_encoder, 1, axis=0))),
      # ALI's psi real: encoder pairs; fake: decoder pairs
      "psi": ((x_shown, z_encoder), (x_decoder, noise["z_prior"])),
  }


def asvae_generator_loss(encoder_pair_terms, decoder_pair_terms, variant,
                         psi1_negatives=None, psi2_negatives=None):
  """The encoder/decoder loss of (5.16): minus (5.14), or one half of it.

  Args:
    encoder_pair_terms: [B] ``log p(x|z) - f_psi1`` on encoder pairs
      (``adversarial.asvae_encoder_pair_term``), or None for variant 'g'.
    decoder_pair_terms: [B] ``log q(z|x) - f_psi2`` on decoder pairs
      (``adversarial.asvae_decoder_pair_term``), or None for variant 'r'.
    variant: 'full' (both halves), 'r' (encoder pairs only, L_VAEx of (5.12))
      or 'g' (decoder pairs only, L_VAEz of (5.13)); the unused half is ignored.
    psi1_negatives, psi2_negatives: None (the dissertation's loss), or [B] logits
      of f_psi1 / f_psi2 on their negative pairs, whose
      ``adversarial.negative_pair_term`` each half then adds to (5.14)
      (``negative_pair_terms=True``).

  Returns:
    Scalar loss: minus the batch mean of the used terms, and minus each given
    half's ``adversarial.negative_pair_term``.
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r}; choose one of {VARIANTS}")
  loss = 0.0
  if variant in ("full", "r"):
    loss = loss - jnp.mean(encoder_pair_terms)
    if psi1_negatives is not None:
      loss = loss - adversarial.negative_pair_term(psi1_negatives)
  if variant in ("full", "g"):
    loss = loss - jnp.mean(decoder_pair_terms)
    if psi2_negatives is not None:
      loss = loss - adversarial.negative_pair_term(psi2_negatives)
  return loss


def relaxed_bernoulli(logits, logistic_noise, temperature):
  """Binary Concrete sample ``sigmoid((logits + noise) / temperature)``.

  Args:
    logits: [...] Bernoulli logits (may be +-inf for probabilities 0 and 1).
    logistic_noise: [...] draws of Logistic(0, 1).
    temperature: tau > 0.

  Returns:
    [...] values in [0, 1], above 1/2 where the Bernoulli draw driven by the
    same noise, ``1[logits + noise > 0]``, is 1.
  """
  return jax.nn.sigmoid((logits + logistic_noise) / temperature)


def relaxed_binarize(key, gray, temperature):
  """A Bernoulli(gray) binarization and its relaxed twin from the same noise.

  Args:
    key: PRNG key.
    gray: [...] pixel probabilities in [0, 1].
    temperature: tau of the relaxation.

  Returns:
    ``(binary, relaxed)``, both [...] in gray's dtype: ``binary = 1[logit(gray)
    + l > 0]`` with ``l ~ Logistic(0, 1)``, so ``P(binary = 1) = gray``, and
    ``relaxed = relaxed_bernoulli(logit(gray), l, temperature)``.
  """
  noise = jax.random.logistic(key, gray.shape, gray.dtype)
  logits = jnp.log(gray) - jnp.log1p(-gray)  # -inf at 0, +inf at 1
  binary = (logits + noise > 0).astype(gray.dtype)
  return binary, relaxed_bernoulli(logits, noise, temperature)


def decoder_pair_encoder_read(relaxed, binary, mode):
  """The x at which the decoder-pair term of (5.14) evaluates ``log q_phi(z | x)``.

  Args:
    relaxed: [..., P] the decoder's relaxed sample x_theta(z, xi), differentiable in theta.
    binary: [..., P] its binary twin (the Bernoulli draw the same noise gives). Binary
      pixels only: 8-bit data read the decoded x itself.
    mode: 'relaxed' (the relaxed x, value and gradient), 'binary' (the binary x, no
      gradient to the decoder), 'straight_through' (the binary x's value with the
      relaxed x's gradient: the encoder reads a real Bernoulli draw, and the decoder
      still learns how its pixels change that reading) or 'score_function' (the
      binary x; the decoder's gradient comes from ``score_function_log_q``).

  Returns:
    [..., P] the x the encoder conditions on.
  """
  if mode == "relaxed":
    return relaxed
  if mode == "binary":
    return jax.lax.stop_gradient(binary)
  if mode == "straight_through":
    return relaxed + jax.lax.stop_gradient(binary - relaxed)
  if mode == "score_function":  # the gradient comes from score_function_log_q instead
    return jax.lax.stop_gradient(binary)
  raise ValueError(f"decoder_pair_encoder_input={mode!r}; choose one of "
                   f"{DECODER_PAIR_ENCODER_INPUTS}")


def score_function_log_q(log_q_a, log_q_b, log_p_a, log_p_b):
  """``E_{x ~ p_theta(x|z)} log q_phi(z|x)`` from two Bernoulli draws, with a score-function
  gradient in theta (``decoder_pair_encoder_input='score_function'``).

  The encoder reads binary draws x_a, x_b ~ p_theta(x|z), which no pathwise gradient
  crosses. The value is their mean; its gradient in theta is the two-sample
  leave-one-out REINFORCE estimate
  ``1/2 [(log q_a - log q_b) grad log p_a + (log q_b - log q_a) grad log p_b]``,
  unbiased for the gradient of the expectation (each draw's baseline is the other's
  independent value); the gradient in phi is that of the mean.

  Args:
    log_q_a, log_q_b: [B] ``log q_phi(z | x_a)``, ``log q_phi(z | x_b)`` (differentiable in phi).
    log_p_a, log_p_b: [B] ``log p_theta(x_a | z)``, ``log p_theta(x_b | z)`` at the same
      draws, held fixed (differentiable in theta).

  Returns:
    [B]: the mean of the two log q values, plus a term of value 0 that carries the
    theta-gradient.
  """
  advantage = jax.lax.stop_gradient(log_q_a - log_q_b)
  surrogate = 0.5 * advantage * (log_p_a - log_p_b)
  return 0.5 * (log_q_a + log_q_b) + surrogate - jax.lax.stop_gradient(surrogate)


def make_method(config, spec):
  """Builds AS-VAE (``config.method == 'asvae'``) or ALI (``'ali'``) from its section."""
  method_name = config.get("method", "")
  if method_name not in ("asvae", "ali"):
    raise ValueError(f"config.method={method_name!r}; dgm_jax.models.asvae builds 'asvae' "
                     "and 'ali' (the launcher sets config.method)")
  section = config[method_name]
  variant = section.variant if method_name == "asvae" else None
  _check(section, spec, method_name)
  likelihood = section.get("likelihood", "bernoulli")
  discrete = likelihood == "discretized_logistic"
  train_continuous = discrete and section.get("dequantize", True)
  discriminators = DISCRIMINATORS[(method_name, variant)]
  players = ("encoder", "decoder") + discriminators
  num_pixels = int(np.prod(spec.shape))
  latent_dim, flow_length = section.latent_dim, section.flow_length
  temperature = section.relaxation_temperature
  decoded_x_mean = section.get("decoded_x", "sample") == "mean"
  # x where the decoder-pair term reads log q_phi(z|x), for binary pixels (module docstring)
  encoder_read = section.get("decoder_pair_encoder_input", "relaxed")
  # f_psi1 = [log q_phi(z|x) - log p(z)] + g_psi1(x, z) (see the module docstring).
  explicit_contrast = bool(section.get("explicit_contrast", False)) and method_name == "asvae"
  gradient_penalty = section.get("disc_gradient_penalty", 0.0)  # gamma; 0: the dissertation's
  # adversarial.negative_pair_term in (5.14); False: the dissertation's loss
  negative_pairs = bool(section.get("negative_pair_terms", False))  # _check: AS-VAE only
  eval_seed = config.eval.binarization_seed

  encoder = encoder_net(section, spec)
  decoder = decoder_net(section, spec, decoder_outputs(likelihood, num_pixels))
  discriminator = JointDiscriminator(
      trunk=section.disc_trunk, x_features=tuple(section.disc_x_features),
      z_hidden=tuple(section.disc_z_hidden), joint_hidden=tuple(section.disc_joint_hidden),
      activation=section.disc_activation, image_shape=tuple(spec.shape),
      kernel_size=section.get("disc_kernel_size", 3))
  steps_per_epoch = max(spec.num_train // config.data.batch_size, 1)
  disc_section = ml_collections.ConfigDict(section.to_dict())
  disc_section.learning_rate = section.disc_learning_rate
  optimizers = {name: make_optimizer(disc_section if name in discriminators else section,
                                     config.train.num_steps, steps_per_epoch)
                for name in players}

  def encode(params, x, eps):
    """Codes and log q(z|x) for x: [B, P], eps: [..., B, D] -> ([..., B, D], [..., B])."""
    mean, log_var = encoder.apply(params["encoder"]["net"], x)
    z_0 = mean + jnp.exp(0.5 * log_var) * eps
    z, log_det = push(params, z_0)
    return z, likelihoods.gaussian_log_prob(z_0, mean, log_var).sum(-1) - log_det

  def push(params, z_0):
    if flow_length == 0:
      return z_0, jnp.zeros(z_0.shape[:-1], z_0.dtype)
    return flows.planar_flow_stack(z_0, params["encoder"]["flow"])

  def log_q(params, x, z):
    """log q_phi(z|x) at given codes z: [B, D], x: [B, P] -> [B]."""
    mean, log_var = encoder.apply(params["encoder"]["net"], x)
    z_0 = z if flow_length == 0 else flows.planar_flow_stack_inverse(z, params["encoder"]["flow"])
    _, log_det = push(params, z_0)
    return likelihoods.gaussian_log_prob(z_0, mean, log_var).sum(-1) - log_det

  def decode(params, z):
    return decoder.apply(params["decoder"], z)

  def logit_of(params, name, x, z):
    return discriminator.apply(params[name], x, z)

  def draw_pairs(params, x_fit, noise):
    """Encoder codes of the data with their log q(z|x), and decoder images x_theta(z, xi)
    of prior codes with the decoder's outputs at those codes."""
    z_encoder, log_qz = encode(params, x_fit, noise["eps"])
    outputs = decode(params, noise["z_prior"])
    return z_encoder, log_qz, decoder_sample(outputs, noise["xi"]), outputs

  def log_prior(z):
    return likelihoods.gaussian_log_prob(z, 0.0, 0.0).sum(-1)

  def encoder_input(x_shown):
    """The x the encoder conditions on for a discriminator input (binary twin if Bernoulli)."""
    return x_shown if discrete else (x_shown > 0.5).astype(x_shown.dtype)

  def psi1_contrast(params, x_fit, x_decoder, noise):
    """Explicit part of f_psi1 on its real and fake pairs: log q(z|x) - log p(z)."""
    z_real, log_q_real = encode(params, x_fit, noise["eps"])
    z_fake = noise["z_independent"]
    real = log_q_real - log_prior(z_real)
    fake = log_q(params, encoder_input(x_decoder), z_fake) - log_prior(z_fake)
    return {"real": real, "fake": fake}

  def decoder_sample(outputs, xi):
    """x_theta(z, xi) from logistic noise xi: relaxed Bernoulli, or a clipped logistic draw
    (the logistic mean with ``decoded_x='mean'``)."""
    if not discrete:
      return relaxed_bernoulli(outputs, xi, temperature)
    mean, log_scale = logistic_params(outputs)
    if decoded_x_mean:
      return mean
    return jnp.clip(mean + jnp.exp(log_scale) * xi, 0.0, 1.0)

  def prepare(key, gray):
    """(x_fit, x_shown): the x of the encoder and log p(x|z), and the x the discriminators see."""
    if not discrete:
      return relaxed_binarize(key, gray, temperature)
    dequantized = transforms.uniform_dequantize(key, gray, likelihoods.NUM_BINS)
    return (dequantized if train_continuous else gray), dequantized

  def discriminator_loss(disc_params, x_shown, z_encoder, x_decoder, noise, contrast=None):
    """Sum over discriminators of their mean losses (5.3), (5.4) or (5.1), plus
    ``disc_gradient_penalty / 2`` times their mean squared input gradients; and metrics."""
    losses, penalties = {}, {}
    pairs = discriminator_pairs(x_shown, z_encoder, x_decoder, noise)
    for name in discriminators:
      logit_fn = functools.partial(logit_of, disc_params, name)
      if gradient_penalty:
        (real, real_sq), (fake, fake_sq) = (
            adversarial.logits_and_input_gradient_sq(logit_fn, *pair) for pair in pairs[name])
        penalties[f"{name}_grad_sq"] = jnp.mean(jnp.concatenate([real_sq, fake_sq]))
      else:
        real, fake = (logit_fn(*pair) for pair in pairs[name])
      if name == "psi1" and contrast is not None:
        real, fake = real + contrast["real"], fake + contrast["fake"]
      metric, loss_fn = DISCRIMINATOR_LOSSES[name]
      losses[metric] = loss_fn(real, fake).mean()
    total = sum(losses.values()) + 0.5 * gradient_penalty * sum(penalties.values())
    return total, {**losses, **penalties}

  def generator_loss(gen_params, disc_params, x_fit, x_shown, noise):
    """Minus (5.14) (AS-VAE) or the ALI generator loss, through reparametrized samples.

    With ``negative_pair_terms`` the logits on each discriminator's negatives feed
    ``adversarial.negative_pair_term``: the decoder's images with independent prior
    codes for f_psi1, the data with another example's encoder code for f_psi2. With
    the explicit contrast, f_psi1 on its negatives includes ``log q_phi(z | x) - log
    p(z)`` at the decoded x, differentiable in the decoder through x (the encoder's
    parameters held fixed: this term is the decoder's). For binary pixels the
    encoder reads the decoded image's binary twin, a step function of x, so that
    part of the decoder's gradient is zero almost everywhere and not estimated.
    """
    params = {**gen_params, **disc_params}
    z_encoder, log_qz_encoder, x_decoder, decoder_logits = draw_pairs(params, x_fit, noise)
    if method_name == "ali":
      loss = adversarial.ali_generator_loss(
          logit_of(params, "psi", x_shown, z_encoder),
          logit_of(params, "psi", x_decoder, noise["z_prior"]),
          non_saturating=section.non_saturating).mean()
      return loss, {}
    metrics, encoder_terms, decoder_terms = {}, None, None
    negatives = {"psi1_negatives": None, "psi2_negatives": None}
    if negative_pairs:
      fakes = {name: fake for name, (_, fake) in
               discriminator_pairs(x_shown, z_encoder, x_decoder, noise).items()}
    if "psi1" in params:
      log_px_given_z = pixel_log_prob(x_fit, decode(params, z_encoder), likelihood,
                                      train_continuous)
      f_psi1 = logit_of(params, "psi1", x_shown, z_encoder)
      if explicit_contrast:  # full reparametrized gradient of the explicit part (ELBO's KL)
        f_psi1 = f_psi1 + log_qz_encoder - log_prior(z_encoder)
      encoder_terms = adversarial.asvae_encoder_pair_term(log_px_given_z, f_psi1)
      metrics.update(log_px_given_z=log_px_given_z.mean(), lvaex_nats=encoder_terms.mean(),
                     f_psi1=f_psi1.mean())
      if negative_pairs:
        x_neg, z_neg = fakes["psi1"]
        f_neg = logit_of(params, "psi1", x_neg, z_neg)
        if explicit_contrast:  # the bracket's path through the decoded x; encoder held fixed
          frozen = {**params, "encoder": jax.lax.stop_gradient(params["encoder"])}
          f_neg = f_neg + log_q(frozen, encoder_input(x_neg), z_neg) - log_prior(z_neg)
        negatives["psi1_negatives"] = f_neg
        metrics["psi1_negative_term"] = adversarial.negative_pair_term(f_neg)
    metrics.update(log_qz_encoder=log_qz_encoder.mean(),
                   explicit_kl=(log_qz_encoder - log_prior(z_encoder)).mean())
    if "psi2" in params:
      x_read = x_decoder if discrete else decoder_pair_encoder_read(  # 8-bit: x itself
          x_decoder, encoder_input(x_decoder), encoder_read)
      log_qz_given_x = log_q(params, x_read, noise["z_prior"])
      if encoder_read == "score_function" and not discrete:
        log_qz_given_x = two_draw_log_q(params, decoder_logits, x_read, log_qz_given_x, noise)
      decoder_terms = adversarial.asvae_decoder_pair_term(
          log_qz_given_x, logit_of(params, "psi2", x_decoder, noise["z_prior"]))
      metrics.update(log_qz_given_x=log_qz_given_x.mean(), lvaez_nats=decoder_terms.mean())
      if negative_pairs:
        f_neg = logit_of(params, "psi2", *fakes["psi2"])
        negatives["psi2_negatives"] = f_neg
        metrics["psi2_negative_term"] = adversarial.negative_pair_term(f_neg)
    return asvae_generator_loss(encoder_terms, decoder_terms, variant, **negatives), metrics

  def two_draw_log_q(params, logits, x_a, log_q_a, noise):
    """score_function_log_q of the decoder pairs' draw x_a and a second draw x_b from the
    same logits (its noise folded from xi's, so the other modes' noise is unchanged)."""
    z = noise["z_prior"]
    xi_b = jax.random.logistic(noise["xi_b_key"], logits.shape, logits.dtype)
    x_b = jax.lax.stop_gradient((logits + xi_b > 0).astype(logits.dtype))
    log_p_a, log_p_b = (likelihoods.bernoulli_log_prob(x, logits).sum(-1) for x in (x_a, x_b))
    return score_function_log_q(log_q_a, log_q(params, x_b, z), log_p_a, log_p_b)

  def init(key, batch):
    keys = jax.random.split(key, len(players) + 1)
    x = flatten(batch["x"])
    z = jnp.zeros(x.shape[:1] + (latent_dim,), x.dtype)
    params = {"encoder": {"net": encoder.init(keys[0], x)}, "decoder": decoder.init(keys[1], z)}
    if flow_length:
      params["encoder"]["flow"] = flows.init_planar_params(
          keys[-1], latent_dim, flow_length, section.flow_init_scale)
    for name, k in zip(discriminators, keys[2:]):
      params[name] = discriminator.init(k, x, z)
    opt_state = {name: optimizers[name].init(params[name]) for name in players}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)

  def train_step(state, batch, key):
    """One step of every player, in this order.

    1. Draw the step's noise (eps for the encoder, prior codes, logistic xi for
       the decoder, independent prior codes) and binarize (8-bit: dequantize) the batch; form the
       encoder pairs ``(x, z_phi(x, eps))`` and decoder pairs ``(x_theta(z,
       xi), z)`` with the current encoder and decoder, gradients stopped.
    2. Discriminators: one Adam step each on the mean of (5.3) / (5.4) (ALI:
       (5.1)) on those pairs and their negatives.
    3. Encoder and decoder: one Adam step on minus (5.14) (or its half for
       variants 'r' / 'g'; ALI: the generator loss of (5.1)), re-forming the
       pairs from the same noise, against the discriminators updated in 2.
    """
    names = ("data", "eps", "z_prior", "xi", "z_independent")
    keys = dict(zip(names, jax.random.split(key, len(names))))
    x_fit, x_shown = prepare(keys["data"], flatten(batch["x"]))
    codes_shape = x_fit.shape[:1] + (latent_dim,)
    noise = {
        "eps": jax.random.normal(keys["eps"], codes_shape, x_fit.dtype),
        "z_prior": jax.random.normal(keys["z_prior"], codes_shape, x_fit.dtype),
        "xi": jax.random.logistic(keys["xi"], x_fit.shape, x_fit.dtype),
        "z_independent": jax.random.normal(keys["z_independent"], codes_shape, x_fit.dtype),
        "xi_b_key": jax.random.fold_in(keys["xi"], 1),  # a second decoder draw (score_function)
    }
    params, opt_state = dict(state.params), dict(state.opt_state)
    disc_params = {name: params[name] for name in discriminators}
    gen_params = {"encoder": params["encoder"], "decoder": params["decoder"]}

    z_encoder, _, x_decoder, _ = jax.lax.stop_gradient(draw_pairs(params, x_fit, noise))
    contrast = None
    if explicit_contrast and "psi1" in discriminators:
      contrast = jax.lax.stop_gradient(psi1_contrast(params, x_fit, x_decoder, noise))
    disc_grads, disc_metrics = jax.grad(discriminator_loss, has_aux=True)(
        disc_params, x_shown, z_encoder, x_decoder, noise, contrast)
    update(params, opt_state, disc_grads)

    disc_params = {name: params[name] for name in discriminators}
    (loss, gen_metrics), gen_grads = jax.value_and_grad(generator_loss, has_aux=True)(
        gen_params, disc_params, x_fit, x_shown, noise)
    update(params, opt_state, gen_grads)

    metrics = {"loss": loss, "grad_norm": optax.tree.norm(gen_grads),
               **disc_metrics, **gen_metrics}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def update(params, opt_state, grads):
    """Applies one optimizer step per player named in ``grads`` (in place on the dicts)."""
    for name, grad in grads.items():
      updates, opt_state[name] = optimizers[name].update(grad, opt_state[name], params[name])
      params[name] = optax.apply_updates(params[name], updates)

  def eval_x(batch):
    if discrete:  # the 8-bit values themselves
      return flatten(batch["x"])
    return transforms.static_binarize(flatten(batch["x"]), batch["index"], eval_seed)

  def log_weights(params, x, key, num_samples):
    """[num_samples, B] log p(x, z) - log q(z|x) for z ~ q(z|x), x: [B, P] binary or 8-bit."""
    eps = jax.random.normal(key, (num_samples,) + x.shape[:1] + (latent_dim,), x.dtype)
    z, log_qz = encode(params, x, eps)
    log_px_z = pixel_log_prob(x, decode(params, z), likelihood)
    return log_px_z + likelihoods.gaussian_log_prob(z, 0.0, 0.0).sum(-1) - log_qz

  def code_of(params, x):
    """The flow image of the base mean: a deterministic code of x [B, P] -> [B, D]."""
    mean, _ = encoder.apply(params["encoder"]["net"], x)
    return push(params, mean)[0]

  def eval_step(params, batch, key):
    x = eval_x(batch)
    probs = pixel_mean(decode(params, code_of(params, x)), likelihood)
    gray = flatten(batch["x"]).astype(probs.dtype)
    return {"elbo_nats": log_weights(params, x, key, 1)[0],
            "rmse": jnp.sqrt(jnp.mean(jnp.square(probs - gray), axis=-1))}

  def log_likelihood(params, batch, key, num_samples):
    x = eval_x(batch)
    chunk = nll.chunk_size_for(num_samples, config.eval.max_chunk)
    return nll.importance_log_likelihood(
        lambda k, n: log_weights(params, x, k, n), key, num_samples, chunk)

  def sample(params, key, num):
    z = jax.random.normal(key, (num, latent_dim))
    return pixel_mean(decode(params, z), likelihood).reshape((num,) + tuple(spec.shape))

  def reconstruct(params, batch, key):
    del key
    probs = pixel_mean(decode(params, code_of(params, eval_x(batch))), likelihood)
    return probs.reshape(batch["x"].shape)

  def encoder_mean(params, batch):
    return encoder.apply(params["encoder"]["net"], eval_x(batch))[0]

  name = method_name if method_name == "ali" or variant == "full" else f"asvae_{variant}"
  return Method(name=name, init=init, train_step=train_step, eval_step=eval_step,
                log_likelihood=log_likelihood, sample=sample, reconstruct=reconstruct,
                encoder_mean=encoder_mean if flow_length == 0 else None)


def encoder_net(section, spec):
  """The encoder's Gaussian base: x [..., P] -> (mean, log_var) [..., latent_dim].

  ``section.encoder_arch``: 'mlp' (``encoder_hidden``) or 'conv'
  (``nets.conv.ConvEncoder`` with ``encoder_conv_features``, ``conv_stage_depth``,
  ``conv_first_kernel_size``).
  """
  if section.get("encoder_arch", "mlp") == "conv":
    return conv.encoder_from_section(section, spec.shape)
  return GaussianMLP(tuple(section.encoder_hidden), section.latent_dim, section.activation)


def decoder_net(section, spec, num_outputs):
  """The decoder: z [..., D] -> [..., num_outputs] (``models.vae.decoder_outputs``).

  ``section.decoder_arch``: 'mlp' (``decoder_hidden``) or 'conv'
  (``nets.conv.ConvDecoder`` with ``decoder_conv_features``, ``conv_stage_depth``).
  """
  if section.get("decoder_arch", "mlp") == "conv":
    return conv.decoder_from_section(section, spec.shape, num_outputs // int(np.prod(spec.shape)))
  return MLP(tuple(section.decoder_hidden), num_outputs, section.activation)


def _check(section, spec, method_name):
  """Raises ValueError naming the first bad setting of ``config.<method_name>``."""
  if method_name == "asvae" and section.variant not in VARIANTS:
    raise ValueError(f"variant={section.variant!r}; choose one of {VARIANTS}")
  if section.disc_trunk not in TRUNKS:
    raise ValueError(f"disc_trunk={section.disc_trunk!r}; choose one of {TRUNKS}")
  if section.disc_trunk == "conv" and len(spec.shape) != 3:
    raise ValueError(f"disc_trunk='conv' needs images [H, W, C], the data are {spec.shape}; "
                     "use disc_trunk='mlp'")
  conv.check_section(section, spec.shape)
  likelihood = section.get("likelihood", "bernoulli")
  check_likelihood(likelihood, spec.kind)
  if likelihood == "bernoulli" and spec.kind not in ("grayscale8", "grayscale17"):
    raise ValueError(f"data of kind {spec.kind!r}: {method_name} models binarized grayscale "
                     "images only (pixels as Bernoulli probabilities, section 5.3.1)")
  if not section.relaxation_temperature > 0:
    raise ValueError(f"relaxation_temperature={section.relaxation_temperature!r} must be > 0")
  if section.flow_length < 0:
    raise ValueError(f"flow_length={section.flow_length!r} must be >= 0 (0: Gaussian encoder)")
  if not section.get("disc_gradient_penalty", 0.0) >= 0:
    raise ValueError(f"disc_gradient_penalty={section.disc_gradient_penalty!r} must be >= 0 "
                     "(0: no penalty, the dissertation's discriminators)")
  if method_name == "ali" and section.get("negative_pair_terms", False):
    raise ValueError("ali.negative_pair_terms applies to the AS-VAE's (5.14) only; ALI's "
                     "generator loss (5.1) has no density-ratio discriminator")
  encoder_input = section.get("decoder_pair_encoder_input", "relaxed")
  if encoder_input not in DECODER_PAIR_ENCODER_INPUTS:
    raise ValueError(f"decoder_pair_encoder_input={encoder_input!r}; choose one of "
                     f"{DECODER_PAIR_ENCODER_INPUTS} ('binary': the Bernoulli draw the relaxed "
                     "decoder sample stands for; 'relaxed': the relaxed sample itself; "
                     "'straight_through': the Bernoulli draw's value with the relaxed "
                     "sample's gradient; 'score_function': two Bernoulli draws and a "
                     "REINFORCE gradient)")
  decoded_x = section.get("decoded_x", "sample")
  if decoded_x not in DECODED_X:
    raise ValueError(f"decoded_x={decoded_x!r}; choose one of {DECODED_X}")
  if decoded_x == "mean" and likelihood != "discretized_logistic":
    raise ValueError("decoded_x='mean' applies to 8-bit data (likelihood='discretized_logistic'); "
                     "binary pixels are drawn by the relaxed Bernoulli")


def flatten(x):
  """[B, H, W, C] -> [B, H*W*C]."""
  return x.reshape(x.shape[0], -1)
