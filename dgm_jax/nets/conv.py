"""Convolutional encoder and decoder (AS-VAE on natural images, section 5.3.3, Fig. 5.2).

Also the image decoder and the VAE's encoder of the all-convolutional semi-supervised
nets of 4.5.3 (``configs/mnist.py:semi,cnn``: 5x5 kernels, no unstrided layers).

Fig. 5.2 draws q_phi(z|x) for 32x32 RGB images as stages of convolutions, each
opening with a stride-2 convolution (5x5 in the first stage, 3x3 after) and
followed by unstrided 3x3 ones, then an MLP to the mean and log-variance of z;
and p_theta(x|z) as an MLP from z to a small feature map, then stages of 3x3
transposed convolutions, each opening with a stride-2 one, back to the image
size, where the per-pixel outputs (mu_x, log sigma_x) are read off. Fig. 5.1
(MNIST) is the same shape with two stages and no unstrided layers. Here the
MLPs are single dense layers, the per-pixel outputs come from a linear 3x3
convolution, and the figures' batch normalization is left out (as in
``nets.discriminators``: it would need running statistics in the train state).
Both modules take and return flattened arrays, so a model uses them exactly
like ``nets.mlp.GaussianMLP`` and ``nets.mlp.MLP``.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dgm_jax.nets.mlp import activation_by_name

__all__ = ["ConvEncoder", "ConvDecoder", "ARCHS", "decoder_start_shape", "encoder_from_section",
           "decoder_from_section", "check_section"]

ARCHS = ("mlp", "conv")


def decoder_start_shape(image_shape, num_stages):
  """``(H / 2^S, W / 2^S)``, the feature map the decoder's S stride-2 stages start from.

  Raises:
    ValueError: the image is not ``(H, W, C)`` or H, W are not multiples of 2^S.
  """
  if len(image_shape) != 3:
    raise ValueError(f"convolutional nets need images [H, W, C], the data are {tuple(image_shape)}")
  height, width, _ = image_shape
  scale = 2**num_stages
  if num_stages < 1 or height % scale or width % scale:
    raise ValueError(f"{num_stages} stride-2 decoder stages need a height and width divisible by "
                     f"2^{num_stages} = {scale} (and at least one stage), the images are "
                     f"{height}x{width}; use fewer stages")
  return height // scale, width // scale


class ConvEncoder(nn.Module):
  """Mean and log-variance of q(z|x) from strided convolution stages (Fig. 5.2).

  Attributes:
    image_shape: ``(H, W, C)`` of one image.
    latent_dim: dimension of z.
    stage_features: channels of each stage; each stage halves the resolution.
    stage_depth: unstrided 3x3 convolutions after each stage's strided one.
    first_kernel_size: kernel size of the first (strided) convolution.
    activation: hidden activation name (see ``nets.mlp.ACTIVATIONS``).
    kernel_size: kernel size of every other convolution.
  """

  image_shape: Sequence[int]
  latent_dim: int
  stage_features: Sequence[int] = (16, 32, 64)
  stage_depth: int = 2
  first_kernel_size: int = 5
  activation: str = "relu"
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    """x: [..., H*W*C] flattened images -> (mean, log_var), each [..., latent_dim]."""
    act = activation_by_name(self.activation)
    batch_shape = x.shape[:-1]
    h = x.reshape((-1,) + tuple(self.image_shape))
    for stage, features in enumerate(self.stage_features):
      size = self.first_kernel_size if stage == 0 else self.kernel_size
      h = act(nn.Conv(features, (size, size), strides=(2, 2), padding="SAME")(h))
      for _ in range(self.stage_depth):
        h = act(nn.Conv(features, (self.kernel_size,) * 2, padding="SAME")(h))
    out = nn.Dense(2 * self.latent_dim)(h.reshape(h.shape[0], -1))
    mean, log_var = jnp.split(out.reshape(batch_shape + (-1,)), 2, axis=-1)
    return mean, log_var


class ConvDecoder(nn.Module):
  """Per-pixel decoder outputs from z through transposed convolution stages (Fig. 5.2).

  Attributes:
    image_shape: ``(H, W, C)`` of one image; H and W divisible by
      ``2^len(stage_features)`` (``decoder_start_shape``).
    outputs_per_pixel: k, 1 for Bernoulli logits, 2 for a logistic mean and
      log-scale (``models.vae.decoder_outputs`` divided by H*W*C).
    stage_features: channels of each stage; each stage doubles the resolution.
    stage_depth: unstrided 3x3 transposed convolutions after each stage's
      strided one.
    activation: hidden activation name.
    kernel_size: kernel size of the transposed convolutions.
  """

  image_shape: Sequence[int]
  outputs_per_pixel: int
  stage_features: Sequence[int] = (64, 32, 16)
  stage_depth: int = 2
  activation: str = "relu"
  kernel_size: int = 3

  @nn.compact
  def __call__(self, z):
    """z: [..., D] -> [..., k*H*W*C]; block i (H*W*C long, flattened like x) is output i."""
    act = activation_by_name(self.activation)
    height, width, channels = self.image_shape
    start_height, start_width = decoder_start_shape(self.image_shape, len(self.stage_features))
    batch_shape = z.shape[:-1]
    h = act(nn.Dense(start_height * start_width * self.stage_features[0])(
        z.reshape(-1, z.shape[-1])))
    h = h.reshape(-1, start_height, start_width, self.stage_features[0])
    for features in self.stage_features:
      size = (self.kernel_size,) * 2
      h = act(nn.ConvTranspose(features, size, strides=(2, 2), padding="SAME")(h))
      for _ in range(self.stage_depth):
        h = act(nn.ConvTranspose(features, size, padding="SAME")(h))
    out = nn.Conv(self.outputs_per_pixel * channels, (3, 3), padding="SAME")(h)
    out = out.reshape(-1, height, width, self.outputs_per_pixel, channels)
    return jnp.moveaxis(out, 3, 1).reshape(batch_shape + (-1,))


def encoder_from_section(section, image_shape):
  """``ConvEncoder`` from a method section's keys: ``latent_dim``, ``activation``,
  ``encoder_conv_features``, ``conv_stage_depth`` (default 0), ``conv_first_kernel_size``
  (default 5) and ``conv_kernel_size`` (default 3)."""
  return ConvEncoder(
      image_shape=tuple(image_shape), latent_dim=section.latent_dim,
      stage_features=tuple(section.encoder_conv_features),
      stage_depth=section.get("conv_stage_depth", 0),
      first_kernel_size=section.get("conv_first_kernel_size", 5), activation=section.activation,
      kernel_size=section.get("conv_kernel_size", 3))


def decoder_from_section(section, image_shape, outputs_per_pixel):
  """``ConvDecoder`` from a method section's keys: ``activation``,
  ``decoder_conv_features``, ``conv_stage_depth`` (default 0) and ``conv_kernel_size``
  (default 3)."""
  return ConvDecoder(
      image_shape=tuple(image_shape), outputs_per_pixel=outputs_per_pixel,
      stage_features=tuple(section.decoder_conv_features),
      stage_depth=section.get("conv_stage_depth", 0), activation=section.activation,
      kernel_size=section.get("conv_kernel_size", 3))


def check_section(section, image_shape):
  """Raises ValueError naming the first architecture key of ``section`` these data cannot take.

  Checks ``encoder_arch`` / ``decoder_arch`` against ``ARCHS``, that 'conv' nets get
  images ``[H, W, C]``, and that the decoder's stride-2 stages divide H and W.
  """
  for key in ("encoder_arch", "decoder_arch"):
    if section.get(key, "mlp") not in ARCHS:
      raise ValueError(f"{key}={section[key]!r}; choose one of {ARCHS}")
  if section.get("encoder_arch", "mlp") == "conv" and len(image_shape) != 3:
    raise ValueError(f"encoder_arch='conv' needs images [H, W, C], the data are "
                     f"{tuple(image_shape)}; use encoder_arch='mlp'")
  if section.get("decoder_arch", "mlp") == "conv":
    try:
      decoder_start_shape(image_shape, len(section.decoder_conv_features))
    except ValueError as error:
      raise ValueError(f"decoder_arch='conv', decoder_conv_features="
                       f"{tuple(section.decoder_conv_features)}: {error}") from None
