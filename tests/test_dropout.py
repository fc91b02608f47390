"""Encoder dropout (section 4.5's one regularizer): the mask, its sharing across particles, the
config checks, and evaluation left deterministic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist
from dgm_jax.data import pipeline, registry
from dgm_jax.models import stein_vae, vae
from dgm_jax.models.base import DataSpec
from dgm_jax.nets.mlp import GaussianMLP, dropout
from dgm_jax.nets.recognition import NoiseMLPEncoder


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_keeps_one_minus_rate_of_the_units_and_preserves_the_mean(rate):
  h = jnp.full((400, 250), 3.0)
  out = dropout(jax.random.PRNGKey(0), h, rate)
  kept = np.asarray(out != 0)
  n = kept.size
  # The kept fraction within 5 binomial standard deviations of 1 - rate.
  assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  np.testing.assert_allclose(np.asarray(out)[kept], 3.0 / (1 - rate), rtol=1e-6)
  assert abs(float(out.mean()) - 3.0) < 5 * 3.0 * np.sqrt(rate / (1 - rate) / n)


def test_dropout_is_the_identity_without_a_key_or_at_rate_zero():
  h = jax.random.normal(jax.random.PRNGKey(1), (5, 7))
  np.testing.assert_array_equal(dropout(None, h, 0.5), h)
  np.testing.assert_array_equal(dropout(jax.random.PRNGKey(2), h, 0.0), h)


def test_a_batch_shape_draws_one_mask_per_example_shared_along_the_particles():
  h = jnp.ones((6, 9, 40))  # [B, M, W]
  out = np.asarray(dropout(jax.random.PRNGKey(3), h, 0.5, batch_shape=(6, 1)))
  np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))
  assert len({out[n, 0].tobytes() for n in range(6)}) == 6  # examples differ


def test_noise_encoder_masks_follow_the_image_so_a_particle_subset_sees_the_same_masks():
  """What the Stein step's fit relies on: f(x, xi_j) with dropout is the same whether it is
  computed among all M particles or among the first m."""
  encoder = NoiseMLPEncoder((16, 16), 3, "tanh", dropout_rate=0.5)
  x = jax.random.bernoulli(jax.random.PRNGKey(4), 0.5, (5, 1, 12)).astype(jnp.float32)
  xi = jax.random.normal(jax.random.PRNGKey(5), (1, 6, 3))
  eta = encoder.init(jax.random.PRNGKey(6), x, xi)
  key = jax.random.PRNGKey(7)
  full = encoder.apply(eta, x, xi, key)
  np.testing.assert_allclose(encoder.apply(eta, x, xi[:, :2], key), full[:, :2], rtol=1e-6,
                             atol=1e-6)
  plain = encoder.apply(eta, x, xi)
  assert not np.allclose(full, plain)  # the masks act in training ...
  np.testing.assert_array_equal(encoder.apply(eta, x, xi, None), plain)  # ... not without a key


def test_gaussian_mlp_drops_units_only_with_a_key():
  net = GaussianMLP((32, 32), 4, "tanh", dropout_rate=0.3)
  x = jax.random.normal(jax.random.PRNGKey(8), (7, 10))
  params = net.init(jax.random.PRNGKey(9), x)
  plain = net.apply(params, x)
  dropped = net.apply(params, x, jax.random.PRNGKey(10))
  assert not np.allclose(dropped[0], plain[0])
  np.testing.assert_array_equal(net.apply(params, x, None)[0], plain[0])


@pytest.mark.parametrize("module", [vae, stein_vae])
@pytest.mark.parametrize("rate,extra,message", [
    (1.0, {}, "encoder_dropout=1.0 must be a probability in"),
    (-0.1, {}, "encoder_dropout=-0.1 must be a probability in"),
    (0.2, {"encoder_arch": "conv"}, "applies to MLP encoders"),
])
def test_bad_dropout_settings_stop_with_one_message(module, rate, extra, message):
  config = mnist.get_config("smoke")
  section = config.vae if module is vae else config.stein_vae
  section.update(encoder_dropout=rate, **extra)
  spec = DataSpec(shape=(8, 8, 1), kind="grayscale8", num_train=100)
  with pytest.raises(ValueError, match=message):
    module.make_method(config, spec)


def test_the_viwae_refuses_dropout():
  config = mnist.get_config("smoke,viwae")
  config.stein_vae.encoder_dropout = 0.2
  spec = DataSpec(shape=(8, 8, 1), kind="grayscale8", num_train=100)
  with pytest.raises(ValueError, match="applies to the Stein VAE only"):
    stein_vae.make_method(config, spec)


@pytest.mark.parametrize("module", [vae, stein_vae])
def test_dropout_acts_in_the_train_step_and_leaves_evaluation_deterministic(module):
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  batch = pipeline.get_batch(data, "train", 0, 8, 0)
  results = {}
  for rate in (0.0, 0.5):
    config = mnist.get_config("smoke")
    (config.vae if module is vae else config.stein_vae).encoder_dropout = rate
    method = module.make_method(config, spec)
    state = method.init(jax.random.PRNGKey(0), batch)
    new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(1))
    evaluated = method.eval_step(state.params, batch, jax.random.PRNGKey(2))
    results[rate] = (new_state.params["encoder"], evaluated["elbo_nats"])
  # Training differs (the masks drop units); evaluating the same parameters does not.
  changed = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: not np.allclose(a, b), results[0.0][0], results[0.5][0]))
  assert any(changed)
  np.testing.assert_array_equal(results[0.0][1], results[0.5][1])
