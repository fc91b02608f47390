"""Fully connected networks for the encoders and decoders of chapters 4 and 5.

``MLP`` is the deterministic trunk used everywhere (e.g. Burda et al.'s
784-200-200-50 architecture, section 4.5.2); ``GaussianHead`` turns features
into the mean and log-variance of a diagonal Gaussian.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "GaussianMLP", "activation_by_name", "ACTIVATIONS"]

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


class MLP(nn.Module):
  """Dense layers with an activation between them and a linear output.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    output_size: width of the final linear layer.
    activation: name of the hidden activation.
  """

  hidden_sizes: Sequence[int]
  output_size: int
  activation: str = "tanh"

  @nn.compact
  def __call__(self, x):
    """x: [..., D_in] -> [..., output_size]."""
    act = activation_by_name(self.activation)
    for width in self.hidden_sizes:
      x = act(nn.Dense(width)(x))
    return nn.Dense(self.output_size)(x)


class GaussianMLP(nn.Module):
  """An MLP whose output is split into the mean and log-variance of N(mean, exp(log_var)).

  Attributes:
    hidden_sizes: widths of the hidden layers.
    latent_dim: dimension of the Gaussian.
    activation: name of the hidden activation.
  """

  hidden_sizes: Sequence[int]
  latent_dim: int
  activation: str = "tanh"

  @nn.compact
  def __call__(self, x):
    """x: [..., D_in] -> (mean [..., latent_dim], log_var [..., latent_dim])."""
    out = MLP(self.hidden_sizes, 2 * self.latent_dim, self.activation)(x)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, log_var
