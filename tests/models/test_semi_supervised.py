"""Semi-supervised pieces (section 4.4) against direct computations, and the Stein step with labels."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from hypothesis import given, settings, strategies as st

from configs import mnist
from dgm_jax.data import pipeline, registry, transforms
from dgm_jax.data.registry import DataError
from dgm_jax.models import semi_supervised, stein_vae, vae
from dgm_jax.models.base import DataSpec, make_optimizer
from dgm_jax.nets.mlp import MLP
from dgm_jax.nets.recognition import NoiseMLPEncoder


def test_label_weight_gives_the_labels_of_a_batch_the_weight_of_its_images():
  # zeta = N_X / (C rho): 784 pixels, 10 classes, 1 labeled pair in 3.
  assert semi_supervised.label_weight(784, 10, 1 / 3) == pytest.approx(235.2)
  x, x_l = jnp.zeros((4, 784)), jnp.ones((2, 784))
  images, labels, weights = semi_supervised.merged_batch(x, x_l, jnp.array([3, 7]), 784, 10)
  np.testing.assert_array_equal(images, np.concatenate([x, x_l]))
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 3, 7])
  np.testing.assert_allclose(weights, [0, 0, 0, 0, 235.2, 235.2], rtol=1e-6)
  # Summed over the batch, labels weigh N_X / C nats-units per example: B * N_X / C in all.
  assert float(jnp.sum(weights)) == pytest.approx(6 * 784 / 10, rel=1e-6)


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 2**31 - 1))
def test_label_log_prob_matches_numpy_log_softmax(seed):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(3, 4, 5)).astype(np.float32) * 10  # [B, M, D], large logits too
  theta = rng.normal(size=(5, 6)).astype(np.float32)
  labels, weights = rng.integers(0, 6, size=3), np.array([0.0, 2.5, 1.0], np.float32)
  got = semi_supervised.label_log_prob(lambda c: c @ theta, jnp.asarray(z), jnp.asarray(labels),
                                       jnp.asarray(weights))
  logits = z.astype(np.float64) @ theta
  want = weights[:, None] * np.take_along_axis(
      scipy.special.log_softmax(logits, -1), labels[:, None, None].repeat(4, 1), -1)[..., 0]
  assert got.shape == (3, 4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  assert np.all(np.isfinite(got))


def test_prediction_errors_average_probabilities_over_codes():
  # Two codes vote for class 0 by a hair, one is sure of class 1: the mean
  # probability picks class 1, a majority vote would pick class 0.
  logits = jnp.log(jnp.array([[[0.51, 0.49], [0.51, 0.49], [0.01, 0.99]]]))
  np.testing.assert_array_equal(semi_supervised.prediction_errors(logits, jnp.array([1])), [0])
  np.testing.assert_array_equal(semi_supervised.prediction_errors(logits, jnp.array([0])), [1])


def test_prediction_errors_average_probabilities_not_logits():
  """Codes [0.9, 0.1], [0.9, 0.1], [1e-4, 1 - 1e-4]: numpy's mean probability picks class 0
  (0.6 to 0.4), the mean log-probability class 1 (-3.1 to -1.5). Each code's logits are
  shifted by a different constant, which its softmax ignores; the second example is random
  logits against numpy's softmax mean."""
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [1e-4, 1 - 1e-4]])
  assert np.argmax(probs.mean(0)) == 0 and np.argmax(np.log(probs).mean(0)) == 1
  random_logits = np.random.default_rng(3).normal(size=(3, 2)) * 3.0
  logits = np.stack([np.log(probs) + np.array([[5.0], [-2.0], [0.5]]), random_logits])
  expected = np.argmax(scipy.special.softmax(logits, axis=-1).mean(1), axis=-1)
  assert expected[0] == 0
  for labels in (expected, 1 - expected):
    np.testing.assert_array_equal(
        semi_supervised.prediction_errors(jnp.asarray(logits), jnp.asarray(labels)),
        (labels != expected).astype(np.float32))


def test_labeled_subset_is_class_balanced_and_seeded():
  labels = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]
  subset = pipeline.labeled_subset(labels, 7, seed=3)
  assert subset.shape == (70,) and np.all(np.diff(subset) > 0)
  np.testing.assert_array_equal(np.bincount(labels[subset]), np.full(10, 7))
  np.testing.assert_array_equal(subset, pipeline.labeled_subset(labels, 7, seed=3))
  assert not np.array_equal(subset, pipeline.labeled_subset(labels, 7, seed=4))
  with pytest.raises(DataError, match="smallest class"):
    pipeline.labeled_subset(labels, 51, seed=0)


def test_semi_supervised_needs_labels():
  config = mnist.get_config("smoke,semi")
  with pytest.raises(ValueError, match="labeled data set"):
    stein_vae.make_method(config, DataSpec(shape=(8, 8, 1), kind="grayscale8", num_train=100))
  config.vae.labeled_batch_size = 0
  with pytest.raises(ValueError, match="labeled_batch_size"):
    vae.make_method(config, DataSpec(shape=(8, 8, 1), kind="grayscale8", num_train=100,
                                     num_classes=10))


def _digits_batch(data, num_unlabeled, num_labeled):
  batch = pipeline.get_batch(data, "train", 0, num_unlabeled, 0)
  labeled = pipeline.get_batch(data, "train", 1, num_labeled, 1)
  return {"x": batch["x"], "x_labeled": labeled["x"], "label_labeled": labeled["label"]}


def svgd_direction_written_out(z, scores):
  """(4.12) for one example's [M, D] codes: (1/M) sum_j [k(z_j, z_i) s_j + grad_{z_j} k],
  k = exp(-|z_i - z_j|^2 / h), h the median of the M x M squared distances over
  log(M + 1) (the default 'liu_wang' convention), in numpy."""
  z, scores = np.asarray(z, np.float64), np.asarray(scores, np.float64)
  num = z.shape[0]
  diffs = z[:, None, :] - z[None, :, :]  # [i, j]: z_i - z_j
  sq = np.sum(diffs**2, axis=-1)
  h = np.median(sq) / np.log(num + 1.0)
  k = np.exp(-sq / h)  # symmetric
  return (k @ scores + (2.0 / h) * np.einsum("ij,ijd->id", k, diffs)) / num


def test_semi_supervised_stein_step_equals_the_algorithm_written_out():
  """Codes of labeled pairs move with the scores of (4.54), theta~ follows (4.51).

  With Adam's eps far above the gradients, one update is ``lr g / eps``, so the
  comparison checks the scale of every gradient (zeta, 1/M, 1/(B + B_l)) and not
  only its sign.
  """
  config = mnist.get_config("smoke,semi")
  section = config.stein_vae
  section.update(num_particles=3, svgd_step_size=0.05, learning_rate=1e2, adam_eps=1e4)
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"],
                  num_classes=10)
  method = stein_vae.make_method(config, spec)
  batch = _digits_batch(data, 6, 3)
  state = method.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(1)
  new_state, metrics = jax.jit(method.train_step)(state, batch, key)

  encoder = NoiseMLPEncoder(tuple(section.encoder_hidden), section.latent_dim, section.activation)
  decoder = MLP(tuple(section.decoder_hidden), int(np.prod(spec.shape)), section.activation)
  binarize_key, noise_key = jax.random.split(key)
  x = jnp.concatenate([
      transforms.dynamic_binarize(binarize_key, batch["x"].reshape(6, -1)),
      transforms.dynamic_binarize(jax.random.fold_in(binarize_key, 1),
                                  batch["x_labeled"].reshape(3, -1))])
  labels = batch["label_labeled"]
  zeta = 64 / (10 * (3 / 9))  # N_X / (C rho) for 8x8 digits
  xi = jax.random.normal(noise_key, (3, section.latent_dim))
  eta, theta, tilde = (state.params[k] for k in ("encoder", "decoder", "label_decoder"))

  def log_lik_x(theta, z):  # [B, M, D] -> [B, M]
    logits = decoder.apply(theta, z)
    return jnp.sum(x[:, None] * logits - jax.nn.softplus(logits), -1)

  def log_lik_y(tilde, z_labeled):  # [3, M, D] -> [3, M]
    logits = z_labeled @ tilde["params"]["theta_tilde"]["kernel"]
    return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None, None], -1)[..., 0]

  def log_joint(theta, tilde, z):  # (4.54) for the labeled rows, (4.12) for the others
    prior = -0.5 * jnp.sum(z**2, -1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)
    label_part = jnp.concatenate([jnp.zeros((6, 3)), zeta * log_lik_y(tilde, z[6:])])
    return log_lik_x(theta, z) + label_part + prior

  z = encoder.apply(eta, x[:, None], xi[None])
  scores = jax.grad(lambda c: jnp.sum(log_joint(theta, tilde, c)))(z)
  moved = z + section.svgd_step_size * np.stack([svgd_direction_written_out(*example)
                                                 for example in zip(z, scores)])
  steps_per_epoch = spec.num_train // config.data.batch_size
  opt = make_optimizer(section, config.train.num_steps, steps_per_epoch)
  # (4.13): half the squared distance of f_eta to the moved codes, summed over the
  # particles and averaged over the examples
  grads = jax.grad(lambda e: 0.5 * jnp.mean(jnp.sum(jnp.square(
      encoder.apply(e, x[:, None], xi[None]) - moved), axis=(1, 2))))(eta)
  eta = optax.apply_updates(eta, opt.update(grads, state.opt_state["encoder"], eta)[0])
  grads = jax.grad(lambda t: -jnp.mean(log_lik_x(t, z)))(theta)
  theta = optax.apply_updates(theta, opt.update(grads, state.opt_state["decoder"], theta)[0])
  grads = jax.grad(lambda t: -zeta * jnp.sum(log_lik_y(t, z[6:])) / (9 * 3))(tilde)
  tilde = optax.apply_updates(tilde, opt.update(grads, state.opt_state["label_decoder"], tilde)[0])

  for name, want in (("encoder", eta), ("decoder", theta), ("label_decoder", tilde)):
    jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6),
                           new_state.params[name], want)
  np.testing.assert_allclose(metrics["label_nll"], -jnp.mean(log_lik_y(state.params["label_decoder"],
                                                                       z[6:])), rtol=1e-5)


@pytest.mark.parametrize("module", [vae, stein_vae])
def test_labels_teach_the_classifier(module):
  """200 steps on 8x8 digits with 10 labels per class: test error far below chance.

  Measured: 0.30 (VAE) and 0.28 (Stein VAE); with every label set to 0 instead,
  0.89 for both, so the bound of 0.45 fails when the labels do not reach the model.
  """
  config = mnist.get_config("smoke,semi")
  section = config[module.__name__.rsplit(".", 1)[-1]]
  section.update(labels_per_class=10, labeled_batch_size=16, learning_rate=1e-2)
  config.train.num_steps = 200
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"],
                  num_classes=10)
  method = module.make_method(config, spec)
  subset = pipeline.labeled_subset(data.labels["train"], 10, seed=0)

  def batch_at(step):
    batch = pipeline.get_batch(data, "train", step, 16, 0)
    chosen = subset[pipeline.batch_indices(len(subset), 16, step, 0)]
    return {"x": batch["x"], "x_labeled": data.splits["train"][chosen],
            "label_labeled": data.labels["train"][chosen]}

  step = jax.jit(method.train_step)
  state = method.init(jax.random.PRNGKey(0), batch_at(0))
  for i in range(200):
    state, _ = step(state, batch_at(i), jax.random.PRNGKey(i))
  errors = [method.eval_step(state.params, b, jax.random.PRNGKey(0))["error_rate"][b["mask"]]
            for b in pipeline.eval_batches(data, "test", 100)]
  error = float(np.mean(np.concatenate(errors)))
  assert error < 0.45, error


def test_noise_conv_encoder_stacks_noise_with_the_image_and_stays_square():
  from dgm_jax.nets.recognition import NoiseConvEncoder
  encoder = NoiseConvEncoder((8, 8, 1), latent_dim=3, features=(4, 8))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(5, 1, 64)), jnp.float32)
  xi = jnp.asarray(rng.normal(size=(1, 4, 3)), jnp.float32)
  params = encoder.init(jax.random.PRNGKey(0), x, xi)
  z = encoder.apply(params, x, xi)
  assert z.shape == (5, 4, 3)
  # Each (example, particle) pair is the encoder of that image and that noise alone.
  np.testing.assert_allclose(z[2, 3], encoder.apply(params, x[2, 0], xi[0, 3]), rtol=1e-5, atol=1e-6)
  assert float(jnp.min(jnp.abs(z[:, 0] - z[:, 1]))) > 0  # the noise moves the codes
  assert float(jnp.min(jnp.abs(z[0] - z[1]))) > 0        # and so does the image
  # xi -> z is square with a non-singular Jacobian, so the change of variables applies.
  _, log_q = stein_vae.change_of_variables_log_q(lambda e: encoder.apply(params, x[0, 0], e),
                                                 xi[0, 0])
  assert np.isfinite(float(log_q))
