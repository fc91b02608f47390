"""The Gaussian-encoder VAE (4.1) and the IWAE bound (4.14): the baselines of chapter 4.

Burda et al.'s one-stochastic-layer MNIST model: an encoder
``q(z|x) = N(mu(x), diag sigma^2(x))`` and a Bernoulli decoder ``p(x|z)``, both
MLPs (784-200-200-50, tanh). With ``objective='vae'`` the loss is the negative
ELBO averaged over k samples (KL in closed form); with ``objective='iwae'`` it
is the negative importance-weighted bound L_k. Training pixels are binarized
afresh every step; evaluation uses one fixed binarization of each split.

8-bit pixels (``likelihood='discretized_logistic'``, section 5.3.1, e.g.
Fashion-MNIST): the decoder outputs, per pixel, a mean ``sigmoid(.)`` on the
[0, 1] scale and a log-scale (floored at ``MIN_LOG_SCALE``) of a logistic.
As 5.3.1 prescribes, training treats images as continuous (``dequantize=True``,
the default): the loss uses the logistic *density* at the uniformly dequantized
pixels ``(255 x + u) / 256``, minus ``log 256`` per pixel. By Jensen,
``log P(bin k) = log E_u[p((k + u) / 256)] - log 256 >= E_u[log p(.)] - log 256``,
so the reported training bound is a lower bound in nats of the discrete pixels.
``dequantize=False`` trains on the discretized logistic directly. Evaluation
(ELBO, importance-sampled NLL) always uses the discretized logistic
``p(x = k | z) = P_theta(x in [k/256, (k+1)/256) | z)`` with open edge bins on
the 8-bit values themselves, so ``nll_nats`` is a bound on the discrete
likelihood and bits/dim (``dgm_jax.eval.nll.bits_per_dim``) is comparable with
prior work. Samples and reconstructions are the logistic means (in (0, 1)).

Semi-supervised (``semi_supervised=True``, the VAE column of Table 4.3): the
labeled pairs of each step add ``zeta log p(y | z)`` with ``p(y | z) =
softmax(theta~ z)`` to the log-likelihood inside the bound (the same decoder and
zeta as the Stein VAE's (4.54), ``models.semi_supervised``); the test split
reports ``error_rate`` of ``argmax_y p(y | mu(x))``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dgm_jax import bounds, likelihoods
from dgm_jax.data import registry, transforms
from dgm_jax.eval import nll
from dgm_jax.eval import posterior_shape as shape
from dgm_jax.models import semi_supervised
from dgm_jax.models.base import Method, check_dropout, make_optimizer
from dgm_jax.nets import conv
from dgm_jax.nets.mlp import MLP, GaussianMLP
from dgm_jax.train.state import TrainState

__all__ = ["make_method", "OBJECTIVES", "LIKELIHOODS", "MIN_LOG_SCALE", "check_likelihood",
           "decoder_outputs", "pixel_log_prob", "pixel_mean"]

OBJECTIVES = ("vae", "iwae")
LIKELIHOODS = ("bernoulli", "discretized_logistic")
MIN_LOG_SCALE = -7.0  # the floor of the logistic log-scale (PixelCNN++'s), on the [0, 1] scale


def make_method(config, spec):
  """Builds the VAE / IWAE method from ``config.vae`` and the data spec."""
  section = config.vae
  if section.objective not in OBJECTIVES:
    raise ValueError(f"vae.objective={section.objective!r}; choose one of {OBJECTIVES}")
  likelihood = section.get("likelihood", "bernoulli")
  check_likelihood(likelihood, spec.kind)
  discrete = likelihood == "discretized_logistic"
  # 5.3.1: train on the density of dequantized pixels, evaluate on the discrete bins.
  train_continuous = discrete and section.get("dequantize", True)
  num_pixels = int(np.prod(spec.shape))
  semi = semi_supervised.settings_from(section, spec)
  label_decoder = semi_supervised.LabelDecoder(semi.num_classes) if semi else None
  conv.check_section(section, spec.shape)
  encoder, decoder = make_nets(section, spec, likelihood)
  steps_per_epoch = max(spec.num_train // config.data.batch_size, 1)
  optimizer = make_optimizer(section, config.train.num_steps, steps_per_epoch)
  eval_seed = config.eval.binarization_seed

  dropout_rate = check_dropout(section)

  def encode(params, x, dropout_key=None):
    """(mean, log_var) of q(z | x); with a ``dropout_key`` (training, ``encoder_dropout`` > 0)
    the encoder's hidden units are dropped (4.5)."""
    if dropout_key is None:
      return encoder.apply(params["encoder"], x)
    return encoder.apply(params["encoder"], x, dropout_key)

  def label_log_lik(params, z, labeled):
    """``zeta log p(y | z)`` [S, B] of codes z [S, B, D]; 0 when ``labeled`` is None."""
    if labeled is None:
      return 0.0
    per_example = semi_supervised.label_log_prob(
        lambda c: label_decoder.apply(params["label_decoder"], c), jnp.swapaxes(z, 0, 1),
        *labeled)
    return jnp.swapaxes(per_example, 0, 1)

  def log_joint(params, x, z, continuous=False):
    """log p(x | z) + log p(z) for x: [..., P] broadcastable against the codes z: [..., D]."""
    log_px_z = pixel_log_prob(x, decoder.apply(params["decoder"], z), likelihood, continuous)
    return log_px_z + likelihoods.gaussian_log_prob(z, 0.0, 0.0).sum(-1)

  def log_weights(params, x, key, num_samples, continuous=False, labeled=None, dropout_key=None):
    """[num_samples, B] log p(x, z) - log q(z|x) for z ~ q(z|x), x: [B, P] binary or 8-bit.

    ``labeled = (labels, weights)`` adds ``weights * log p(y | z)`` (semi-supervised);
    ``dropout_key`` (training) drops the encoder's hidden units at ``encoder_dropout``.
    """
    mean, log_var = encode(params, x, dropout_key)
    z = sample_gaussian(key, mean, log_var, num_samples)
    log_qz = likelihoods.gaussian_log_prob(z, mean, log_var).sum(-1)
    return bounds.log_weights(log_joint(params, x, z, continuous)
                              + label_log_lik(params, z, labeled), log_qz)

  def objective(params, x, key, labeled=None, dropout_key=None):
    if section.objective == "iwae":
      bound = bounds.iwae_bound(log_weights(params, x, key, section.num_samples,
                                            train_continuous, labeled, dropout_key))
    else:
      bound = elbo_closed_form_kl(params, x, key, train_continuous, labeled, dropout_key)
    return -jnp.mean(bound), {"bound_nats": jnp.mean(bound)}

  def elbo_closed_form_kl(params, x, key, continuous=False, labeled=None, dropout_key=None):
    mean, log_var = encode(params, x, dropout_key)
    z = sample_gaussian(key, mean, log_var, section.num_samples)
    outputs = decoder.apply(params["decoder"], z)
    log_px_z = (pixel_log_prob(x, outputs, likelihood, continuous)
                + label_log_lik(params, z, labeled)).mean(0)
    return log_px_z - likelihoods.kl_diag_gaussian_std_normal(mean, log_var).sum(-1)

  def init(key, batch):
    enc_key, dec_key = jax.random.split(key)
    x = flatten(batch["x"])
    dummy_z = jnp.zeros(x.shape[:1] + (section.latent_dim,))
    params = {"encoder": encoder.init(enc_key, x), "decoder": decoder.init(dec_key, dummy_z)}
    if semi:
      params["label_decoder"] = label_decoder.init(jax.random.fold_in(key, 1), dummy_z)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))

  def train_x(key, images):
    x = flatten(images)
    if not discrete:
      return transforms.dynamic_binarize(key, x)
    if train_continuous:
      return transforms.uniform_dequantize(key, x, likelihoods.NUM_BINS)
    return x

  def train_step(state, batch, key):
    data_key, sample_key = jax.random.split(key)
    x, labeled = train_x(data_key, batch["x"]), None
    if semi:  # unlabeled rows, then the labeled pairs with weight zeta (4.4)
      x_labeled = train_x(jax.random.fold_in(data_key, 1), batch["x_labeled"])
      x, labels, label_weights = semi_supervised.merged_batch(
          x, x_labeled, batch["label_labeled"], num_pixels, semi.num_classes)
      labeled = (labels, label_weights)
    dropout_key = jax.random.fold_in(key, 2) if dropout_rate else None
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, x, sample_key,
                                                                      labeled, dropout_key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def eval_x(batch):
    if discrete:  # the 8-bit values themselves
      return flatten(batch["x"])
    return transforms.static_binarize(flatten(batch["x"]), batch["index"], eval_seed)

  def eval_step(params, batch, key):
    x = eval_x(batch)
    metrics = {"elbo_nats": elbo_closed_form_kl(params, x, key)}
    if semi:  # argmax_y p(y | z) at the encoder mean
      mean, _ = encoder.apply(params["encoder"], x)
      metrics["error_rate"] = semi_supervised.prediction_errors(
          label_decoder.apply(params["label_decoder"], mean[:, None]), batch["label"])
    return metrics

  def log_likelihood(params, batch, key, num_samples):
    x = eval_x(batch)
    chunk = nll.chunk_size_for(num_samples, config.eval.max_chunk)
    return nll.importance_log_likelihood(
        lambda k, n: log_weights(params, x, k, n), key, num_samples, chunk)

  def laplace_log_likelihood(params, batch, key, num_samples):
    return nll.batched_laplace_log_likelihood(
        lambda x_n, z: log_joint(params, x_n, z), eval_x(batch), encoder_mean(params, batch),
        key, num_samples, config.eval.max_chunk)

  def posterior_shape(params, batch, key, num_samples):
    x = eval_x(batch)
    mean, log_var = encoder.apply(params["encoder"], x)
    z = jnp.swapaxes(sample_gaussian(key, mean, log_var, num_samples), 0, 1)  # [B, S, D]
    log_q = likelihoods.gaussian_log_prob(z, mean[:, None], log_var[:, None]).sum(-1)
    return shape.batched_shape_mismatch(
        lambda x_n, c: log_joint(params, x_n, c), x, z, log_q)

  def sample(params, key, num):
    z = jax.random.normal(key, (num, section.latent_dim))
    probs = pixel_mean(decoder.apply(params["decoder"], z), likelihood)
    return probs.reshape((num,) + tuple(spec.shape))

  def reconstruct(params, batch, key):
    x = eval_x(batch)
    mean, _ = encoder.apply(params["encoder"], x)
    del key
    return pixel_mean(decoder.apply(params["decoder"], mean), likelihood).reshape(batch["x"].shape)

  def encoder_mean(params, batch):
    return encoder.apply(params["encoder"], eval_x(batch))[0]

  return Method(name=section.objective, init=init, train_step=train_step, eval_step=eval_step,
                log_likelihood=log_likelihood, sample=sample, reconstruct=reconstruct,
                encoder_mean=encoder_mean, laplace_log_likelihood=laplace_log_likelihood,
                posterior_shape=posterior_shape, semi_supervised=semi)


def make_nets(section, spec, likelihood):
  """q(z|x) and the decoder: MLPs, or with ``encoder_arch`` / ``decoder_arch = 'conv'`` the
  convolutional nets of ``nets.conv`` (stride-2 stages of ``encoder_conv_features`` channels and
  transposed ones of ``decoder_conv_features``: 4.5.3's nets with 5x5 kernels under
  ``configs/mnist.py:semi,cnn``, or Fig. 5.2's as in ``configs/cifar10.py``)."""
  latent_dim, act = section.latent_dim, section.activation
  num_pixels = int(np.prod(spec.shape))
  if section.get("encoder_arch", "mlp") == "conv":
    encoder = conv.encoder_from_section(section, spec.shape)
  else:
    encoder = GaussianMLP(tuple(section.hidden_sizes), latent_dim, act,
                          section.get("encoder_dropout", 0.0))
  outputs = decoder_outputs(likelihood, num_pixels)
  if section.get("decoder_arch", "mlp") == "conv":
    decoder = conv.decoder_from_section(section, spec.shape, outputs // num_pixels)
  else:
    decoder = MLP(tuple(reversed(section.hidden_sizes)), outputs, act)
  return encoder, decoder


def check_likelihood(likelihood, kind):
  """Raises ValueError unless ``likelihood`` can model pixels of data ``kind``."""
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"likelihood={likelihood!r}; choose one of {LIKELIHOODS}")
  levels = registry.KINDS.get(kind)
  if likelihood == "discretized_logistic" and levels != likelihoods.NUM_BINS:
    raise ValueError(f"likelihood='discretized_logistic' models 8-bit pixels "
                     f"({likelihoods.NUM_BINS} levels); data of kind {kind!r} have "
                     f"{levels or 'no pixel'} levels: use likelihood='bernoulli'")
  if likelihood == "bernoulli" and levels is None:
    raise ValueError(f"likelihood='bernoulli' models pixels in [0, 1] (binarized); data of "
                     f"kind {kind!r} are not images")


def decoder_outputs(likelihood, num_pixels):
  """Decoder output width: logits (Bernoulli), or a mean and a log-scale per pixel."""
  return 2 * num_pixels if likelihood == "discretized_logistic" else num_pixels


def logistic_params(outputs):
  """Decoder outputs [..., 2P] -> (mean in (0, 1), log_scale >= MIN_LOG_SCALE), each [..., P]."""
  raw_mean, raw_log_scale = jnp.split(outputs, 2, axis=-1)
  return jax.nn.sigmoid(raw_mean), jnp.maximum(raw_log_scale, MIN_LOG_SCALE)


def pixel_log_prob(x, outputs, likelihood, continuous=False):
  """log p(x | z) summed over pixels: [..., B, P] data and decoder outputs -> [..., B].

  Bernoulli with logits ``outputs``; or, for ``'discretized_logistic'``, the
  discretized logistic of the 8-bit values x (``continuous=False``), or the
  logistic density of dequantized x minus ``log 256`` per pixel, which lower-bounds
  the discrete log-probability in expectation over the dequantization noise.
  """
  if likelihood == "bernoulli":
    return likelihoods.bernoulli_log_prob(x, outputs).sum(-1)
  mean, log_scale = logistic_params(outputs)
  if continuous:
    return (likelihoods.logistic_log_prob(x, mean, log_scale).sum(-1)
            - x.shape[-1] * math.log(likelihoods.NUM_BINS))
  return likelihoods.discretized_logistic_log_prob(x, mean, log_scale).sum(-1)


def pixel_mean(outputs, likelihood):
  """Decoder outputs -> per-pixel means in [0, 1] (Bernoulli probabilities or logistic means)."""
  if likelihood == "bernoulli":
    return jax.nn.sigmoid(outputs)
  return logistic_params(outputs)[0]


def sample_gaussian(key, mean, log_var, num_samples):
  """Reparametrized draws z = mean + exp(log_var / 2) eps: [num_samples, *mean.shape]."""
  eps = jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * log_var) * eps


def flatten(x):
  """[B, H, W, C] -> [B, H*W*C]."""
  return x.reshape(x.shape[0], -1)
