"""Fully connected networks for the encoders and decoders of chapters 4 and 5.

``MLP`` is the deterministic trunk used everywhere (e.g. Burda et al.'s
784-200-200-50 architecture, section 4.5.2); ``GaussianHead`` turns features
into the mean and log-variance of a diagonal Gaussian.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "GaussianMLP", "activation_by_name", "ACTIVATIONS", "dropout"]

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),
    "elu": jax.nn.elu,
}


def activation_by_name(name):
  """Looks up an activation; an unknown name lists the known ones."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def dropout(key, h, rate, batch_shape=None):
  """Inverted dropout: each unit of h kept with probability 1 - rate and scaled by 1 / (1 - rate).

  Args:
    key: PRNG key; None returns h unchanged (evaluation), as does ``rate=0``.
    h: [..., W] hidden units.
    rate: the probability of dropping a unit, in [0, 1).
    batch_shape: the mask's shape without its last axis, broadcastable against
      ``h.shape[:-1]`` (default: all of it). ``(B, 1)`` for h of [B, M, W] draws one
      mask per example, shared by its M particles.

  Returns:
    h with the dropped units zeroed and the kept ones scaled, so E[dropout(h)] = h.
  """
  if key is None or rate == 0.0:
    return h
  shape = h.shape if batch_shape is None else tuple(batch_shape) + h.shape[-1:]
  keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return jnp.where(keep, h / (1.0 - rate), 0.0)


class MLP(nn.Module):
  """Dense layers with an activation between them and a linear output.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    output_size: width of the final linear layer.
    activation: name of the hidden activation.
    dropout_rate: dropout on every hidden layer's units when ``__call__`` gets a
      ``dropout_key`` (training); 0 or no key: none. Section 4.5 names dropout as the
      one regularizer of its experiments.
  """

  hidden_sizes: Sequence[int]
  output_size: int
  activation: str = "tanh"
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, dropout_key=None, mask_batch_shape=None):
    """x: [..., D_in] -> [..., output_size]; ``mask_batch_shape`` as ``dropout``'s."""
    act = activation_by_name(self.activation)
    for layer, width in enumerate(self.hidden_sizes):
      x = act(nn.Dense(width)(x))
      if dropout_key is not None:
        x = dropout(jax.random.fold_in(dropout_key, layer), x, self.dropout_rate,
                    mask_batch_shape)
    return nn.Dense(self.output_size)(x)


class GaussianMLP(nn.Module):
  """An MLP whose output is split into the mean and log-variance of N(mean, exp(log_var)).

  Attributes:
    hidden_sizes: widths of the hidden layers.
    latent_dim: dimension of the Gaussian.
    activation: name of the hidden activation.
    dropout_rate: as ``MLP``'s, with a ``dropout_key``.
  """

  hidden_sizes: Sequence[int]
  latent_dim: int
  activation: str = "tanh"
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, dropout_key=None):
    """x: [..., D_in] -> (mean [..., latent_dim], log_var [..., latent_dim])."""
    out = MLP(self.hidden_sizes, 2 * self.latent_dim, self.activation, self.dropout_rate)(
        x, dropout_key)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, log_var
