"""Convolutional AS-VAE / ALI networks (Figs. 5.1-5.2), configs/cifar10.py and its config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10, mnist
from dgm_jax.models import asvae
from dgm_jax.models.base import DataSpec
from dgm_jax.nets import conv
from dgm_jax.nets.discriminators import JointDiscriminator
from dgm_jax.train import config_check
from dgm_jax.train.guards import ConfigError

CIFAR_SHAPE = (32, 32, 3)
NUM_PIXELS = 32 * 32 * 3


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: a.shape, tree)


def test_fig_5_2_encoder_shapes():
  section = cifar10.get_config().asvae
  encoder = asvae.encoder_net(section, DataSpec(CIFAR_SHAPE, "color8", 10))
  x = jnp.zeros((5, NUM_PIXELS), jnp.float32)
  params = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), x)["params"]
  mean, log_var = jax.eval_shape(encoder.apply, {"params": params}, x)
  assert mean.shape == log_var.shape == (5, 100)
  # 5x5 stride 2 to 16 channels, two 3x3 of 16; 3x3 stride 2 to 32, two 3x3; to 64, two 3x3.
  kernels = [params[f"Conv_{i}"]["kernel"].shape for i in range(9)]
  assert kernels[0] == (5, 5, 3, 16) and kernels[3] == (3, 3, 16, 32)
  assert kernels[6] == (3, 3, 32, 64) and kernels[8] == (3, 3, 64, 64)
  assert params["Dense_0"]["kernel"].shape == (4 * 4 * 64, 200)  # 32 / 2^3 = 4


def test_fig_5_2_decoder_shapes_and_leading_axes():
  section = cifar10.get_config().asvae
  decoder = asvae.decoder_net(section, DataSpec(CIFAR_SHAPE, "color8", 10), 2 * NUM_PIXELS)
  z = jnp.zeros((3, 5, 100), jnp.float32)  # [samples, batch, latent]
  params = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), z)["params"]
  assert jax.eval_shape(decoder.apply, {"params": params}, z).shape == (3, 5, 2 * NUM_PIXELS)
  assert params["Dense_0"]["kernel"].shape == (100, 4 * 4 * 64)
  assert params["ConvTranspose_0"]["kernel"].shape[-1] == 64
  assert params["ConvTranspose_6"]["kernel"].shape[-1] == 16  # the 32x32 stage
  assert params["Conv_0"]["kernel"].shape == (3, 3, 16, 6)  # (mean, log-scale) x RGB


def test_decoder_output_blocks_are_whole_images_of_one_output():
  """Block k of the flat output is output k of every pixel, flattened like the images."""
  shape, num_pixels = (8, 8, 3), 8 * 8 * 3
  decoder = conv.ConvDecoder(shape, outputs_per_pixel=2, stage_features=(4, 2), stage_depth=0)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
  params = jax.jit(decoder.init)(jax.random.PRNGKey(1), z)
  head = dict(params["params"]["Conv_0"])  # channels: 3 means, then 3 log-scales
  head["kernel"] = head["kernel"].at[..., 3:].set(0.0)
  head["bias"] = head["bias"].at[3:].set(7.0)
  params = {"params": {**params["params"], "Conv_0": head}}
  out = np.asarray(jax.jit(decoder.apply)(params, z))
  np.testing.assert_array_equal(out[:, num_pixels:], 7.0)
  assert np.all(np.std(out[:, :num_pixels].reshape(2, *shape), axis=(1, 2)) > 0)


def test_decoder_start_shape_needs_divisible_images():
  assert conv.decoder_start_shape((28, 28, 1), 2) == (7, 7)
  assert conv.decoder_start_shape(CIFAR_SHAPE, 3) == (4, 4)
  with pytest.raises(ValueError, match="divisible by 2\\^3 = 8"):
    conv.decoder_start_shape((28, 28, 1), 3)


def test_discriminator_kernel_size():
  disc = JointDiscriminator(trunk="conv", x_features=(4, 8), z_hidden=(6,), joint_hidden=(6,),
                            image_shape=CIFAR_SHAPE, kernel_size=5)
  x, z = jnp.zeros((2, NUM_PIXELS)), jnp.zeros((2, 8))
  params = jax.eval_shape(disc.init, jax.random.PRNGKey(0), x, z)["params"]
  assert params["Conv_0"]["kernel"].shape == (5, 5, 3, 4)
  assert params["Conv_1"]["kernel"].shape == (5, 5, 4, 8)
  assert jax.eval_shape(disc.apply, {"params": params}, x, z).shape == (2,)


def test_mlp_is_the_default_architecture():
  section = mnist.get_config("smoke").asvae
  assert (section.encoder_arch, section.decoder_arch, section.disc_kernel_size) == ("mlp", "mlp", 3)
  spec = DataSpec((28, 28, 1), "grayscale8", 10)
  assert type(asvae.encoder_net(section, spec)).__name__ == "GaussianMLP"
  assert type(asvae.decoder_net(section, spec, 784)).__name__ == "MLP"


def test_conv_decoder_on_mnist_needs_two_stages():
  config = mnist.get_config("smoke")
  config.method = "asvae"
  config.asvae.update(encoder_arch="conv", decoder_arch="conv", decoder_conv_features=(8, 8, 4))
  with pytest.raises(ValueError, match="decoder_conv_features=\\(8, 8, 4\\).*28x28"):
    asvae.make_method(config, DataSpec((28, 28, 1), "grayscale8", 10))
  config.asvae.decoder_conv_features = (8, 4)  # Fig. 5.1: 7x7 -> 14x14 -> 28x28
  asvae.make_method(config, DataSpec((28, 28, 1), "grayscale8", 10))


@pytest.mark.parametrize("key,value,needle", [
    ("encoder_arch", "resnet", "asvae.encoder_arch='resnet' is not a network architecture"),
    ("decoder_arch", "CONV", "asvae.decoder_arch='CONV' is not a network architecture"),
    ("encoder_conv_features", (), "asvae.encoder_conv_features=() must be a non-empty tuple"),
    ("decoder_conv_features", (8, 0), "asvae.decoder_conv_features=(8, 0) must be"),
    ("conv_stage_depth", -1, "asvae.conv_stage_depth=-1 must be an integer >= 0"),
    ("disc_kernel_size", 0, "asvae.disc_kernel_size=0 must be a positive integer"),
])
def test_config_check_rejects_bad_network_keys(key, value, needle):
  config = cifar10.get_config("smoke")
  config.asvae[key] = value
  with pytest.raises(ConfigError) as info:
    config_check.validate(config, "asvae")
  message = str(info.value)
  assert needle in message and "\n" not in message
  assert message.startswith("invalid config: " + needle)  # the one problem, on one line
  config_check.validate(cifar10.get_config("smoke"), "asvae")  # the unchanged config passes
