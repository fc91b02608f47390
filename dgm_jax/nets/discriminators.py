"""Joint discriminators f_psi(x, z) of ALI and the AS-VAE (section 5.3, Figs. 5.1-5.3).

The figures give every discriminator one shape: a trunk on the image x (two
strided 3x3 convolutions and global average pooling for MNIST, Fig. 5.1; 5x5
kernels for CIFAR-10, Fig. 5.2), an MLP on the code z, the two feature vectors
concatenated, and an MLP down to one logit.
``JointDiscriminator`` builds that shape with either a convolutional or a
fully connected trunk on x. The figures' batch normalization is left out: it
would need running statistics in the train state and makes a logit depend on
the rest of its batch, which (5.3)-(5.4) do not assume.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dgm_jax.nets.mlp import MLP, activation_by_name

__all__ = ["JointDiscriminator", "TRUNKS"]

TRUNKS = ("conv", "mlp")


class JointDiscriminator(nn.Module):
  """A logit ``f_psi(x, z)``: trunk(x) and MLP(z), concatenated, then an MLP.

  Attributes:
    trunk: ``'conv'`` (3x3 convolutions of stride 2, then global average
      pooling; Fig. 5.1) or ``'mlp'`` (dense layers).
    x_features: channels of the convolutions (``'conv'``) or widths of the
      dense layers (``'mlp'``) of the trunk on x.
    z_hidden: widths of the MLP on z; its last width is the z feature size.
    joint_hidden: widths of the hidden layers of the MLP on the concatenation.
    activation: hidden activation name (see ``nets.mlp.ACTIVATIONS``).
    image_shape: ``(H, W, C)`` of one image; required by the ``'conv'`` trunk,
      which reshapes flattened inputs.
    kernel_size: side of the ``'conv'`` trunk's square kernels (3 in Fig. 5.1,
      5 in Fig. 5.2).
  """

  trunk: str = "mlp"
  x_features: Sequence[int] = (200,)
  z_hidden: Sequence[int] = (200,)
  joint_hidden: Sequence[int] = (200,)
  activation: str = "leaky_relu"
  image_shape: Optional[Sequence[int]] = None
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x, z):
    """x: [..., P] (flattened) or [..., H, W, C]; z: [..., D] -> logits [...]."""
    act = activation_by_name(self.activation)
    batch_shape = z.shape[:-1]
    if self.trunk == "conv":
      if self.image_shape is None:
        raise ValueError("the 'conv' trunk needs image_shape=(H, W, C)")
      h = x.reshape((-1,) + tuple(self.image_shape))
      for features in self.x_features:
        h = act(nn.Conv(features, (self.kernel_size,) * 2, strides=(2, 2),
                        padding="SAME")(h))
      h = jnp.mean(h, axis=(1, 2)).reshape(batch_shape + (-1,))
    elif self.trunk == "mlp":
      h = x.reshape(batch_shape + (-1,))
      for width in self.x_features:
        h = act(nn.Dense(width)(h))
    else:
      raise ValueError(f"unknown trunk {self.trunk!r}; choose one of {TRUNKS}")
    g = z
    for width in self.z_hidden:
      g = act(nn.Dense(width)(g))
    joint = jnp.concatenate([h, g], axis=-1)
    return MLP(tuple(self.joint_hidden), 1, self.activation)(joint)[..., 0]
