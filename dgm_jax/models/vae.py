"""The Gaussian-encoder VAE (4.1) and the IWAE bound (4.14): the baselines of chapter 4.

Burda et al.'s one-stochastic-layer MNIST model: an encoder
``q(z|x) = N(mu(x), diag sigma^2(x))`` and a Bernoulli decoder ``p(x|z)``, both
MLPs (784-200-200-50, tanh). With ``objective='vae'`` the loss is the negative
ELBO averaged over k samples (KL in closed form); with ``objective='iwae'`` it
is the negative importance-weighted bound L_k. Training pixels are binarized
afresh every step; evaluation uses one fixed binarization of each split.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dgm_jax import bounds, likelihoods
from dgm_jax.data import transforms
from dgm_jax.eval import nll
from dgm_jax.models.base import Method, make_optimizer
from dgm_jax.nets.mlp import MLP, GaussianMLP
from dgm_jax.train.state import TrainState

__all__ = ["make_method", "OBJECTIVES"]

OBJECTIVES = ("vae", "iwae")


def make_method(config, spec):
  """Builds the VAE / IWAE method from ``config.vae`` and the data spec."""
  section = config.vae
  if section.objective not in OBJECTIVES:
    raise ValueError(f"vae.objective={section.objective!r}; choose one of {OBJECTIVES}")
  num_pixels = int(np.prod(spec.shape))
  encoder = GaussianMLP(tuple(section.hidden_sizes), section.latent_dim, section.activation)
  decoder = MLP(tuple(reversed(section.hidden_sizes)), num_pixels, section.activation)
  steps_per_epoch = max(spec.num_train // config.data.batch_size, 1)
  optimizer = make_optimizer(section, config.train.num_steps, steps_per_epoch)
  eval_seed = config.eval.binarization_seed

  def log_weights(params, x, key, num_samples):
    """[num_samples, B] log p(x, z) - log q(z|x) for z ~ q(z|x), x: [B, P] binary."""
    mean, log_var = encoder.apply(params["encoder"], x)
    z = sample_gaussian(key, mean, log_var, num_samples)
    logits = decoder.apply(params["decoder"], z)
    log_px_z = likelihoods.bernoulli_log_prob(x, logits).sum(-1)
    log_pz = likelihoods.gaussian_log_prob(z, 0.0, 0.0).sum(-1)
    log_qz = likelihoods.gaussian_log_prob(z, mean, log_var).sum(-1)
    return log_px_z + log_pz - log_qz

  def objective(params, x, key):
    if section.objective == "iwae":
      bound = bounds.iwae_bound(log_weights(params, x, key, section.num_samples))
    else:
      bound = elbo_closed_form_kl(params, x, key)
    return -jnp.mean(bound), {"bound_nats": jnp.mean(bound)}

  def elbo_closed_form_kl(params, x, key):
    mean, log_var = encoder.apply(params["encoder"], x)
    z = sample_gaussian(key, mean, log_var, section.num_samples)
    logits = decoder.apply(params["decoder"], z)
    log_px_z = likelihoods.bernoulli_log_prob(x, logits).sum(-1).mean(0)
    return log_px_z - likelihoods.kl_diag_gaussian_std_normal(mean, log_var).sum(-1)

  def init(key, batch):
    enc_key, dec_key = jax.random.split(key)
    x = flatten(batch["x"])
    params = {
        "encoder": encoder.init(enc_key, x),
        "decoder": decoder.init(dec_key, jnp.zeros(x.shape[:1] + (section.latent_dim,))),
    }
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))

  def train_step(state, batch, key):
    binarize_key, sample_key = jax.random.split(key)
    x = transforms.dynamic_binarize(binarize_key, flatten(batch["x"]))
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, x, sample_key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def eval_x(batch):
    return transforms.static_binarize(flatten(batch["x"]), batch["index"], eval_seed)

  def eval_step(params, batch, key):
    x = eval_x(batch)
    return {"elbo_nats": elbo_closed_form_kl(params, x, key)}

  def log_likelihood(params, batch, key, num_samples):
    x = eval_x(batch)
    chunk = nll.chunk_size_for(num_samples, config.eval.max_chunk)
    return nll.importance_log_likelihood(
        lambda k, n: log_weights(params, x, k, n), key, num_samples, chunk)

  def sample(params, key, num):
    z = jax.random.normal(key, (num, section.latent_dim))
    probs = jax.nn.sigmoid(decoder.apply(params["decoder"], z))
    return probs.reshape((num,) + tuple(spec.shape))

  def reconstruct(params, batch, key):
    x = eval_x(batch)
    mean, _ = encoder.apply(params["encoder"], x)
    del key
    return jax.nn.sigmoid(decoder.apply(params["decoder"], mean)).reshape(batch["x"].shape)

  def encoder_mean(params, batch):
    return encoder.apply(params["encoder"], eval_x(batch))[0]

  return Method(name=section.objective, init=init, train_step=train_step, eval_step=eval_step,
                log_likelihood=log_likelihood, sample=sample, reconstruct=reconstruct,
                encoder_mean=encoder_mean)


def sample_gaussian(key, mean, log_var, num_samples):
  """Reparametrized draws z = mean + exp(log_var / 2) eps: [num_samples, *mean.shape]."""
  eps = jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * log_var) * eps


def flatten(x):
  """[B, H, W, C] -> [B, H*W*C]."""
  return x.reshape(x.shape[0], -1)
