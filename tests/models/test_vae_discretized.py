"""The 8-bit (discretized logistic) VAE and AS-VAE / ALI of section 5.3.1 on a tiny input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_mnist, mnist
from dgm_jax.data import pipeline, registry
from dgm_jax.models import asvae, vae
from dgm_jax.models.base import DataSpec

SHAPE = (6, 6, 1)


def _batch(num=5, seed=0):
  levels = np.random.default_rng(seed).integers(0, 256, size=(num,) + SHAPE)
  levels[:, :2] = 0  # a background, like Fashion-MNIST's
  return {"x": jnp.asarray(levels / 255.0), "index": jnp.arange(num)}


def _vae_method(**overrides):
  config = fashion_mnist.get_config("smoke")
  config.vae.update(overrides)
  return vae.make_method(config, DataSpec(shape=SHAPE, kind="grayscale8", num_train=100))


@pytest.mark.parametrize("dequantize", [True, False])
def test_importance_bound_is_a_discrete_log_prob_above_the_elbo(dequantize):
  method = _vae_method(num_samples=400, dequantize=dequantize)
  batch = _batch()
  state = method.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(method.train_step)
  for i in range(5):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  log_lik = np.asarray(method.log_likelihood(state.params, batch, jax.random.PRNGKey(7), 2000))
  elbo = np.asarray(method.eval_step(state.params, batch, jax.random.PRNGKey(8))["elbo_nats"])
  assert log_lik.shape == elbo.shape == (5,)
  assert np.all(log_lik <= 0.0), log_lik  # log of a probability of discrete pixels
  assert np.all(elbo <= log_lik + 0.05), (elbo, log_lik)
  assert np.all(np.isfinite(elbo))


def test_samples_and_reconstructions_are_images():
  method = _vae_method()
  batch = _batch()
  state = method.init(jax.random.PRNGKey(0), batch)
  for images in (method.sample(state.params, jax.random.PRNGKey(1), 3),
                 method.reconstruct(state.params, batch, jax.random.PRNGKey(2))):
    images = np.asarray(images)
    assert images.shape[1:] == SHAPE and np.all((images >= 0) & (images <= 1))


def test_likelihood_mismatches_are_one_clear_error():
  with pytest.raises(ValueError, match="likelihood='discretized_logistic' models 8-bit"):
    vae.make_method(fashion_mnist.get_config("smoke"),
                    DataSpec(shape=(8, 8, 1), kind="grayscale17", num_train=100))
  with pytest.raises(ValueError, match="choose one of"):
    _vae_method(likelihood="gaussian")
  with pytest.raises(ValueError, match="not images"):
    vae.make_method(mnist.get_config("smoke"), DataSpec(shape=(2,), kind="continuous",
                                                        num_train=100))
  config = fashion_mnist.get_config("smoke")
  config.method = "ali"
  with pytest.raises(ValueError, match="8-bit"):
    asvae.make_method(config, DataSpec(shape=(8, 8, 1), kind="grayscale17", num_train=100))


@pytest.mark.filterwarnings("ignore:full MNIST not found")
@pytest.mark.parametrize("method_name,dequantize", [("asvae", True), ("ali", True),
                                                    ("asvae", False)])
def test_adversarial_step_on_8bit_pixels(method_name, dequantize):
  config = fashion_mnist.get_config("smoke")
  config.method = method_name
  config[method_name].dequantize = dequantize
  data = registry.load("mnist")  # 8-bit digits (the bundled fallback when MNIST is absent)
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  method = asvae.make_method(config, spec)
  batch = pipeline.get_batch(data, "train", 0, 8, 0)
  state = method.init(jax.random.PRNGKey(0), batch)
  state, metrics = jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(1))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  eval_batch = next(pipeline.eval_batches(data, "test", 8))
  eval_batch.pop("mask")
  log_lik = np.asarray(method.log_likelihood(state.params, eval_batch, jax.random.PRNGKey(2), 4))
  assert np.all(np.isfinite(log_lik) & (log_lik <= 0))
  rmse = np.asarray(method.eval_step(state.params, eval_batch, jax.random.PRNGKey(3))["rmse"])
  assert np.all((rmse > 0) & (rmse < 1))
