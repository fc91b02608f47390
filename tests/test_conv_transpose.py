"""nets.conv.PhaseConvTranspose against flax's nn.ConvTranspose (lax.conv_transpose), the truth.

The phase decomposition must give the same outputs, the same gradients in the
kernel, the bias and the input, and the same parameters from the same key, for
odd and even kernels, strides 1-3 and non-square inputs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm_jax.nets import conv

CASES = [(kernel, stride, shape) for kernel in (1, 2, 5) for stride in (1, 2, 3)
         for shape in ((4, 4), (3, 5))]


def _pair(kernel, stride, features=4):
  size, strides = (kernel, kernel), (stride, stride)
  return (nn.ConvTranspose(features, size, strides=strides, padding="SAME"),
          conv.PhaseConvTranspose(features, size, strides))


def _perturbed(params, key):
  """Non-zero bias and a kernel off its initial scale, so every term shows."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


@pytest.mark.parametrize("kernel,stride,shape", CASES)
def test_outputs_and_gradients_match_flax_conv_transpose(kernel, stride, shape):
  reference, phases = _pair(kernel, stride)
  x = jax.random.normal(jax.random.PRNGKey(kernel * 10 + stride), (2,) + shape + (3,))
  params = reference.init(jax.random.PRNGKey(0), x)
  same = jax.tree_util.tree_map(  # same initializers, names, shapes and dtypes
      lambda a, b: a.dtype == b.dtype and np.array_equal(a, b),
      phases.init(jax.random.PRNGKey(0), x), params)
  assert all(jax.tree_util.tree_leaves(same)), same
  params = _perturbed(params, jax.random.PRNGKey(1))
  want, got = reference.apply(params, x), phases.apply(params, x)
  assert got.shape == want.shape == (2, shape[0] * stride, shape[1] * stride, 4)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)

  weights = jax.random.normal(jax.random.PRNGKey(2), want.shape)  # a generic cotangent
  def loss(module):
    return lambda p, inputs: jnp.sum(weights * module.apply(p, inputs))
  want_grads = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  got_grads = jax.grad(loss(phases), argnums=(0, 1))(params, x)
  for got_leaf, want_leaf in zip(jax.tree_util.tree_leaves(got_grads),
                                 jax.tree_util.tree_leaves(want_grads)):
    np.testing.assert_allclose(got_leaf, want_leaf, atol=1e-4, rtol=1e-5)


def test_each_output_phase_reads_only_its_own_taps():
  """A one-hot kernel tap t lands, for every input pixel, on the output s * i + t - pad_low."""
  kernel_size, stride = 5, 2
  low, _ = conv._same_transpose_padding(kernel_size, stride)  # pylint: disable=protected-access
  x = jnp.zeros((1, 4, 1, 1)).at[0, 1, 0, 0].set(1.0)  # one pixel at row 1
  for tap in range(kernel_size):
    kernel = jnp.zeros((kernel_size, 1, 1, 1)).at[tap, 0, 0, 0].set(1.0)
    y = np.asarray(conv.conv_transpose_by_phases(x, kernel, (stride, 1)))[0, :, 0, 0]
    row = stride * 1 + low - tap  # output o reads dilated input o + tap - low = stride * i
    expected = np.zeros(8)
    if 0 <= row < 8:
      expected[row] = 1.0
    want = np.asarray(jax.lax.conv_transpose(x, kernel, (stride, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    np.testing.assert_array_equal(want[0, :, 0, 0], expected)  # the row formula is right
    np.testing.assert_array_equal(y, expected)


def test_decoder_keeps_the_conv_transpose_parameter_names():
  """Checkpoints written before the phase layers (nn.ConvTranspose_i) still load."""
  decoder = conv.ConvDecoder((8, 8, 1), outputs_per_pixel=1, stage_features=(4, 2), stage_depth=1)
  params = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), jnp.zeros((1, 3)))["params"]
  assert sorted(k for k in params if k.startswith("ConvTranspose")) == [
      f"ConvTranspose_{i}" for i in range(4)]
  assert params["ConvTranspose_0"]["kernel"].shape == (3, 3, 4, 4)
  assert params["ConvTranspose_3"]["kernel"].shape == (3, 3, 2, 2)


def test_whole_decoder_is_the_same_function_either_way():
  """ConvDecoder with the phase layers against the same decoder on nn.ConvTranspose."""
  settings = dict(image_shape=(8, 12, 1), outputs_per_pixel=2, stage_features=(6, 4),
                  stage_depth=1, activation="leaky_relu", kernel_size=5)
  phases = conv.ConvDecoder(**settings)
  reference = conv.ConvDecoder(**settings, transpose_impl="lax")
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 7))
  params = _perturbed(reference.init(jax.random.PRNGKey(1), z), jax.random.PRNGKey(2))
  np.testing.assert_allclose(phases.apply(params, z), reference.apply(params, z),
                             atol=1e-4, rtol=1e-5)
  grads = [jax.grad(lambda p, d=d: jnp.sum(jnp.sin(d.apply(p, z))))(params)
           for d in (phases, reference)]
  for got, want in zip(*map(jax.tree_util.tree_leaves, grads)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="transpose_impl"):
    conv.ConvDecoder(**settings, transpose_impl="fft").init(jax.random.PRNGKey(1), z)
