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
like ``nets.mlp.GaussianMLP`` and ``nets.mlp.MLP``. The decoder's transposed
convolutions are ``PhaseConvTranspose``: ``flax.linen.ConvTranspose``'s function
and parameters, computed as one ordinary convolution per layer (see
``conv_transpose_by_phases``).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dgm_jax.nets.mlp import activation_by_name

__all__ = ["ConvEncoder", "ConvDecoder", "PhaseConvTranspose", "conv_transpose_by_phases", "ARCHS",
           "decoder_start_shape", "encoder_from_section", "decoder_from_section", "check_section"]

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


def _same_transpose_padding(kernel_size, stride):
  """Low and high padding of the zero-dilated input in ``lax.conv_transpose(..., 'SAME')``."""
  pad_len = kernel_size + stride - 2
  low = kernel_size - 1 if stride > kernel_size - 1 else int(np.ceil(pad_len / 2))
  return low, pad_len - low


def _phase_taps(kernel_size, stride):
  """Per output phase p and input offset e, the kernel tap ``t = s e + pad - p`` (or -1).

  Output ``o = s q + p`` of a stride-s transposed convolution reads input ``q + e``
  through tap t whenever ``0 <= t < k``: each phase is an ordinary correlation.

  Returns:
    (taps [E, s] int with -1 for no tap, lowest offset e_min).
  """
  low, _ = _same_transpose_padding(kernel_size, stride)
  offsets = [(p + t - low) // stride for p in range(stride) for t in range(kernel_size)
             if (p + t - low) % stride == 0]
  e_min, e_max = min(offsets), max(offsets)
  taps = np.full((e_max - e_min + 1, stride), -1, np.int32)
  for p in range(stride):
    for e in range(e_min, e_max + 1):
      t = stride * e + low - p
      if 0 <= t < kernel_size:
        taps[e - e_min, p] = t
  return taps, e_min


def conv_transpose_by_phases(x, kernel, strides):
  """``lax.conv_transpose(x, kernel, strides, 'SAME')`` as one stride-1 convolution.

  A stride-s transposed convolution computes each of its s x s output phases
  (the outputs at ``(s q + a, s r + b)``) as an ordinary correlation of the input
  with a subset of the kernel's taps. Stacking those sub-kernels as s^2 groups of
  output channels gives one unstrided convolution on the small input, followed by
  depth-to-space; the result is the same sum term for term. It exists for speed:
  XLA:CPU takes the kernel gradient of ``lax.conv_transpose`` (an input-dilated
  convolution) by a slow path, 33x the time of the layer's input gradient for one
  5x5 stride-2 layer at batch 114, and the whole semi-supervised CNN decoder's
  forward and backward pass runs 17.5x faster this way (``benchmarks/conv_transpose.py``).

  Args:
    x: [N, H, W, C_in].
    kernel: [kh, kw, C_in, C_out], as ``flax.linen.ConvTranspose`` holds it
      (``transpose_kernel=False``).
    strides: (s_h, s_w).

  Returns:
    [N, H s_h, W s_w, C_out].
  """
  (kh, kw, c_in, c_out), (sh, sw) = kernel.shape, strides
  taps_h, min_h = _phase_taps(kh, sh)
  taps_w, min_w = _phase_taps(kw, sw)
  # phase_kernel[e_h, e_w, c_in, a, b, c_out] = kernel[taps_h[e_h, a], taps_w[e_w, b]] or 0.
  rows = kernel[np.maximum(taps_h, 0)]                      # [E_h, s_h, kw, C_in, C_out]
  grid = rows[:, :, np.maximum(taps_w, 0)]                  # [E_h, s_h, E_w, s_w, C_in, C_out]
  mask = (taps_h >= 0)[:, :, None, None] & (taps_w >= 0)[None, None]
  grid = jnp.where(mask[..., None, None], grid, 0)
  phase_kernel = jnp.transpose(grid, (0, 2, 4, 1, 3, 5)).reshape(
      taps_h.shape[0], taps_w.shape[0], c_in, sh * sw * c_out)
  padding = [(-min_h, taps_h.shape[0] - 1 + min_h), (-min_w, taps_w.shape[0] - 1 + min_w)]
  y = jax.lax.conv_general_dilated(x, phase_kernel, (1, 1), padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  n, height, width, _ = y.shape
  y = y.reshape(n, height, width, sh, sw, c_out).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, height * sh, width * sw, c_out)


class PhaseConvTranspose(nn.Module):
  """``flax.linen.ConvTranspose`` with SAME padding, computed by ``conv_transpose_by_phases``.

  Same parameters (``kernel`` [kh, kw, C_in, C_out], ``bias``), initializers and
  outputs as ``nn.ConvTranspose(features, kernel_size, strides, padding="SAME")``,
  so checkpoints of either load in the other; only the computation differs.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (s_h, s_w).
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    """x: [N, H, W, C_in] -> [N, H s_h, W s_w, features]."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)  # as flax's layers do
    return conv_transpose_by_phases(x, kernel, tuple(self.strides)) + bias


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
    transpose_impl: ``"phases"`` (``PhaseConvTranspose``, the default) or ``"lax"``
      (``nn.ConvTranspose``): the same function and parameters, computed two ways
      (``benchmarks/conv_transpose.py`` times them).
  """

  image_shape: Sequence[int]
  outputs_per_pixel: int
  stage_features: Sequence[int] = (64, 32, 16)
  stage_depth: int = 2
  activation: str = "relu"
  kernel_size: int = 3
  transpose_impl: str = "phases"

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
    if self.transpose_impl not in ("phases", "lax"):
      raise ValueError(f"transpose_impl={self.transpose_impl!r} is not 'phases' or 'lax'")
    layer = 0  # named as nn.ConvTranspose layers are, so earlier checkpoints still load
    for features in self.stage_features:
      size = (self.kernel_size,) * 2
      for strides in [(2, 2)] + [(1, 1)] * self.stage_depth:
        name = f"ConvTranspose_{layer}"
        if self.transpose_impl == "lax":
          h = act(nn.ConvTranspose(features, size, strides=strides, padding="SAME", name=name)(h))
        else:
          h = act(PhaseConvTranspose(features, size, strides, name=name)(h))
        layer += 1
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
