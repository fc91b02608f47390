"""The Stein recognition model f_eta(x, xi) of section 4.2.2.

Noise ``xi ~ N(0, I)`` enters with the data: concatenated to the flattened
image for MLPs. The first layer of ``[x, xi]`` is computed as ``W_x x + W_xi xi``
(the same map), so the image part is computed once per example and shared by
its M particles. With ``dim xi == dim z`` the map ``xi -> z`` is square, so the
encoder density follows by the change of variables
``q(z | x) = q0(xi) |det d f / d xi|^-1`` (section 4.3).
"""

from typing import Sequence

import flax.linen as nn
from dgm_jax.nets.mlp import MLP, activation_by_name

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
    act = activation_by_name(self.activation)
    first, *rest = self.hidden_sizes
    hidden = act(nn.Dense(first, name="input_x")(x)
                 + nn.Dense(first, use_bias=False, name="input_xi")(xi))
    return MLP(tuple(rest), self.latent_dim, self.activation, name="trunk")(hidden)
