"""The Stein recognition model f_eta(x, xi) of section 4.2.2.

Noise ``xi ~ N(0, I)`` enters with the data. For MLPs it is concatenated to the
flattened image, and the first layer of ``[x, xi]`` is computed as ``W_x x + W_xi xi``
(the same map), so the image part is computed once per example and shared by its M
particles. For CNNs (the semi-supervised nets of 4.5.3) it is mapped linearly to an
image-sized map and stacked with the image as a second channel, so every particle
runs the convolutions. With ``dim xi == dim z`` the map ``xi -> z`` is square, so the
encoder density follows by the change of variables
``q(z | x) = q0(xi) |det d f / d xi|^-1`` (section 4.3).

``NoiseMLPEncoder(output="location_scale")`` (not in the dissertation) reads its
last layer as a location and a log-variance, ``z = m(x, xi) + exp(v(x, xi) / 2) * xi``,
with the noise's input weights starting at zero: at initialization it is the Gaussian
VAE's encoder (the same trunk and heads), and the noise input lets q grow away from a
Gaussian. With ``output="mlp"`` (the dissertation's) the noise must reach z through
the tanh layers alone, so every x-dependent scale has to come from their curvature.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dgm_jax.nets.mlp import MLP, activation_by_name, dropout

__all__ = ["NoiseMLPEncoder", "NoiseConvEncoder", "ENCODER_OUTPUTS"]

ENCODER_OUTPUTS = ("mlp", "location_scale")


class NoiseMLPEncoder(nn.Module):
  """z = f_eta(x, xi): an MLP on ``[x, xi]``.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    latent_dim: dimension of z (and of xi).
    activation: hidden activation name.
    dropout_rate: dropout on the hidden units when called with a ``dropout_key``
      (training, 4.5). The mask follows the image: x of [B, 1, D_x] against xi of
      [1, M, D] draws one mask per example, shared by its M particles, so the
      particles describe one q(z | x) and a fit on a subset of them sees the same
      masks as the codes it moves.
    output: ``"mlp"`` (z is the MLP's output, the dissertation's) or
      ``"location_scale"`` (``z = m + exp(v / 2) * xi`` from the MLP's two halves
      m and v, noise input weights initialized at zero; module docstring).
  """

  hidden_sizes: Sequence[int]
  latent_dim: int
  activation: str = "tanh"
  dropout_rate: float = 0.0
  output: str = "mlp"

  @nn.compact
  def __call__(self, x, xi, dropout_key=None):
    """x: [..., D_x], xi: [..., latent_dim] (broadcast together) -> z: [..., latent_dim]."""
    if self.output not in ENCODER_OUTPUTS:
      raise ValueError(f"output={self.output!r}: expected one of {ENCODER_OUTPUTS}")
    location_scale = self.output == "location_scale"
    act = activation_by_name(self.activation)
    first, *rest = self.hidden_sizes
    xi_init = nn.initializers.zeros if location_scale else nn.initializers.lecun_normal()
    hidden = act(nn.Dense(first, name="input_x")(x)
                 + nn.Dense(first, use_bias=False, kernel_init=xi_init, name="input_xi")(xi))
    mask_shape = x.shape[:-1]
    if dropout_key is not None:
      hidden = dropout(jax.random.fold_in(dropout_key, len(self.hidden_sizes)), hidden,
                       self.dropout_rate, mask_shape)
    out = MLP(tuple(rest), (1 + location_scale) * self.latent_dim, self.activation,
              self.dropout_rate, name="trunk")(hidden, dropout_key, mask_shape)
    if not location_scale:
      return out
    location, log_var = jnp.split(out, 2, axis=-1)
    return location + jnp.exp(0.5 * log_var) * xi


class NoiseConvEncoder(nn.Module):
  """z = f_eta(x, xi): strided convolutions on ``[x, W xi]`` stacked as channels (4.5.3).

  The all-convolutional encoder of the semi-supervised experiments: 5x5 kernels
  with stride 2 (32 and 64 of them), leaky ReLU, then a dense layer to z. xi
  keeps ``dim xi == dim z`` (so the change of variables still applies) and is
  spatially aligned with the image by a learned linear map to one H x W channel.

  Attributes:
    image_shape: ``(H, W, C)``.
    latent_dim: dimension of z (and of xi).
    features: channels of the strided convolutions.
    activation: hidden activation name.
    kernel_size: their kernel size.
  """

  image_shape: Sequence[int]
  latent_dim: int
  features: Sequence[int] = (32, 64)
  activation: str = "leaky_relu"
  kernel_size: int = 5

  @nn.compact
  def __call__(self, x, xi):
    """x: [..., H*W*C], xi: [..., latent_dim] (broadcast together) -> z: [..., latent_dim]."""
    act = activation_by_name(self.activation)
    height, width, channels = self.image_shape
    batch_shape = jnp.broadcast_shapes(x.shape[:-1], xi.shape[:-1])
    noise_map = nn.Dense(height * width, use_bias=False, name="input_xi")(xi)
    images = jnp.broadcast_to(x, batch_shape + x.shape[-1:]).reshape(
        (-1, height, width, channels))
    noise_map = jnp.broadcast_to(noise_map, batch_shape + noise_map.shape[-1:]).reshape(
        (-1, height, width, 1))
    h = jnp.concatenate([images, noise_map], axis=-1)
    for features in self.features:
      h = act(nn.Conv(features, (self.kernel_size,) * 2, strides=(2, 2), padding="SAME")(h))
    z = nn.Dense(self.latent_dim, name="output")(h.reshape(h.shape[0], -1))
    return z.reshape(batch_shape + (self.latent_dim,))
