"""The Stein recognition model f_eta(x, xi) of section 4.2.2.

Noise ``xi ~ N(0, I)`` enters with the data: concatenated to the flattened
image for MLPs. With ``dim xi == dim z`` the map ``xi -> z`` is square, so the
encoder density follows by the change of variables
``q(z | x) = q0(xi) |det d f / d xi|^-1`` (section 4.3).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dgm_jax.nets.mlp import MLP

__all__ = ["NoiseMLPEncoder"]


class NoiseMLPEncoder(nn.Module):
  """z = f_eta(x, xi): an MLP on ``[x, xi]``.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    latent_dim: dimension of z (and of xi).
    activation: hidden activation name.
  """

  hidden_sizes: Sequence[int]
  latent_dim: int
  activation: str = "tanh"

  @nn.compact
  def __call__(self, x, xi):
    """x: [..., D_x], xi: [..., latent_dim] (broadcast together) -> z: [..., latent_dim]."""
    batch_shape = jnp.broadcast_shapes(x.shape[:-1], xi.shape[:-1])
    inputs = jnp.concatenate([jnp.broadcast_to(x, batch_shape + x.shape[-1:]),
                              jnp.broadcast_to(xi, batch_shape + xi.shape[-1:])], axis=-1)
    return MLP(self.hidden_sizes, self.latent_dim, self.activation)(inputs)
