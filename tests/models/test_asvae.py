"""AS-VAE and ALI (chapter 5): discriminator optimum, variants, flow inverse, steps, launchers."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from configs import mnist
from dgm_jax import adversarial, flows, likelihoods
from dgm_jax.data import pipeline, registry, transforms
from dgm_jax.models import asvae
from dgm_jax.models.base import DataSpec
from dgm_jax.nets.discriminators import JointDiscriminator
from xla_levels import optimized_jit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Toy of Corollary 8 with scalar x and z: q(x) = N(0, 1), q(z|x) = N(0.8 x, 0.5^2);
# p(z) = N(0, 1), p(x|z) = N(z, 0.5^2), so p(x) = N(0, 1.25).
_Q_SLOPE, _Q_STD, _P_STD = 0.8, 0.5, 0.5


def _toy_optimal_psi1(x, z):
  """f_psi1* = log q(x, z) - log p(x) p(z) of (5.5)."""
  log_q = scipy.stats.norm.logpdf(x) + scipy.stats.norm.logpdf(z, _Q_SLOPE * x, _Q_STD)
  log_p = scipy.stats.norm.logpdf(x, 0.0, np.sqrt(1.0 + _P_STD**2)) + scipy.stats.norm.logpdf(z)
  return log_q - log_p


def _toy_pairs(key, num):
  """(encoder pairs, decoded-x-with-independent-prior-z pairs), each ([num, 1], [num, 1])."""
  k = jax.random.split(key, 5)
  x_q = jax.random.normal(k[0], (num, 1))
  z_q = _Q_SLOPE * x_q + _Q_STD * jax.random.normal(k[1], (num, 1))
  z_decoded = jax.random.normal(k[2], (num, 1))
  x_p = z_decoded + _P_STD * jax.random.normal(k[3], (num, 1))
  z_independent = jax.random.normal(k[4], (num, 1))
  return (x_q, z_q), (x_p, z_independent)


def test_trained_psi1_matches_the_log_density_ratio_of_corollary_8():
  disc = JointDiscriminator(trunk="mlp", x_features=(32,), z_hidden=(32,), joint_hidden=(64,),
                            activation="softplus")
  params = disc.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)), jnp.zeros((1, 1)))
  num_steps = 2000
  optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, num_steps, 0.1))

  def loss_fn(p, key):
    (x_q, z_q), (x_p, z_p) = _toy_pairs(key, 256)
    return adversarial.psi1_loss(disc.apply(p, x_q, z_q), disc.apply(p, x_p, z_p)).mean()

  @optimized_jit  # 2,000 scanned steps
  def train(params):
    def body(carry, key):
      p, opt_state = carry
      grads = jax.grad(loss_fn)(p, key)
      updates, opt_state = optimizer.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None
    keys = jax.random.split(jax.random.PRNGKey(1), num_steps)
    return jax.lax.scan(body, (params, optimizer.init(params)), keys)[0][0]

  params = train(params)
  (x_q, z_q), (x_p, z_p) = _toy_pairs(jax.random.PRNGKey(2), 500)  # held out, both sides
  x, z = np.concatenate([x_q, x_p]), np.concatenate([z_q, z_p])
  learned = np.asarray(disc.apply(params, jnp.asarray(x), jnp.asarray(z)))
  truth = _toy_optimal_psi1(x[:, 0], z[:, 0])
  assert np.corrcoef(learned, truth)[0, 1] >= 0.95  # 0.977 with these seeds


# The inputs of (5.14) each variant ignores: AS-VAE-r has no decoder-pair (psi2) half,
# AS-VAE-g no encoder-pair (psi1) half.
UNUSED_INPUTS = {"full": (), "r": ("log_qz_given_x", "f_psi2"), "g": ("log_px_given_z", "f_psi1")}


@pytest.mark.parametrize("variant", ["full", "r", "g"])
def test_variant_objectives_drop_the_other_half(variant):
  rng = np.random.default_rng(0)
  inputs = {name: jnp.asarray(rng.normal(size=6)) for name in
            ("log_px_given_z", "f_psi1", "log_qz_given_x", "f_psi2")}

  def loss(inputs):
    return asvae.asvae_generator_loss(
        adversarial.asvae_encoder_pair_term(inputs["log_px_given_z"], inputs["f_psi1"]),
        adversarial.asvae_decoder_pair_term(inputs["log_qz_given_x"], inputs["f_psi2"]), variant)

  grads = jax.grad(loss)(inputs)
  for name, grad in grads.items():
    # loss = -mean(log-density - f): d/d log-density = -1/B, d/d f = +1/B, 0 where unused.
    expected = 0.0 if name in UNUSED_INPUTS[variant] else (1 if name[0] == "f" else -1) / 6
    np.testing.assert_allclose(grad, np.full(6, expected), atol=1e-12, err_msg=name)
  trained = {"f_psi1": "psi1", "f_psi2": "psi2"}
  assert set(asvae.DISCRIMINATORS[("asvae", variant)]) == {
      trained[name] for name in trained if name not in UNUSED_INPUTS[variant]}


def test_discriminator_pairs_fake_the_product_of_the_marginals():
  """Rows are labelled by value: x_shown row i is i, its code 100 + i; z_prior row j is
  200 + j, the x decoded from it 300 + j; the fresh z_independent 400 + j. Real pairs
  keep each x with its own z; fake pairs break that link in the ways (5.3)/(5.4) ask."""
  rows = jnp.arange(5.0)[:, None]
  x_shown, z_encoder = rows + jnp.zeros((1, 3)), 100.0 + rows + jnp.zeros((1, 2))
  z_prior = 200.0 + rows + jnp.zeros((1, 2))
  x_decoder = 300.0 + rows + jnp.zeros((1, 3))
  noise = {"z_prior": z_prior, "z_independent": 400.0 + rows + jnp.zeros((1, 2))}
  pairs = asvae.discriminator_pairs(x_shown, z_encoder, x_decoder, noise)
  encoder_pair, decoder_pair = (x_shown, z_encoder), (x_decoder, z_prior)
  def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))
  assert same(pairs["psi1"][0], encoder_pair) and same(pairs["psi2"][0], decoder_pair)
  assert same(pairs["psi"][0], encoder_pair) and same(pairs["psi"][1], decoder_pair)
  # psi1's fake: decoded x with a fresh z, neither its generating z nor an encoder code
  x, z = pairs["psi1"][1]
  np.testing.assert_array_equal(x, x_decoder)
  np.testing.assert_array_equal(z, noise["z_independent"])
  # psi2's fake: data x with a code of another example of the batch, every code once
  x, z = pairs["psi2"][1]
  np.testing.assert_array_equal(x, x_shown)
  owners = np.asarray(z[:, 0] - 100.0)  # the example each code was encoded from
  assert sorted(owners) == list(range(5)) and np.all(owners != np.arange(5)), owners


def test_relaxed_binarize_is_a_bernoulli_draw_with_a_relaxed_twin():
  gray = jnp.concatenate([jnp.zeros(10), jnp.ones(10), jnp.full(40_000, 0.3)]).astype(jnp.float32)
  binary, relaxed = asvae.relaxed_binarize(jax.random.PRNGKey(0), gray, 0.5)
  binary, relaxed = np.asarray(binary), np.asarray(relaxed)
  assert binary.dtype == np.float32 and set(np.unique(binary)) <= {0.0, 1.0}
  np.testing.assert_array_equal(binary[:20], np.asarray(gray[:20]))
  # P(1) = 0.3; 4 standard errors of a mean of 40,000 draws is 0.0092.
  assert abs(binary[20:].mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 40_000)
  np.testing.assert_array_equal(binary, (relaxed > 0.5).astype(np.float32))
  assert np.mean((relaxed[20:] > 0.0) & (relaxed[20:] < 1.0)) > 0.9  # soft, not binary


def test_planar_flow_inverse_recovers_inputs_and_inverse_jacobian():
  params = flows.init_planar_params(jax.random.PRNGKey(0), 3, 4, scale=1.0)
  z_0 = jax.random.normal(jax.random.PRNGKey(1), (4, 3)) * 2.0
  z_k, _ = flows.planar_flow_stack(z_0, params)
  np.testing.assert_allclose(flows.planar_flow_stack_inverse(z_k, params), z_0, atol=1e-9)
  forward = lambda v: flows.planar_flow_stack(v, params)[0]
  inverse = lambda v: flows.planar_flow_stack_inverse(v, params)
  jac_forward = jax.jacfwd(forward)(z_0[0])
  np.testing.assert_allclose(jax.jacrev(inverse)(z_k[0]), np.linalg.inv(jac_forward), atol=1e-8)
  # Gradients wrt every flow parameter (u, w and b): d z_0 / d params from the identity
  # stack(inverse(y)) = y, i.e. -J^-1 d stack / d params (only b's was checked, and a
  # Newton step that stopped the gradient through u and w was off by up to 0.99).
  inverse_grads = jax.jacrev(lambda p: flows.planar_flow_stack_inverse(z_k[0], p))(params)
  forward_grads = jax.jacfwd(lambda p: flows.planar_flow_stack(z_0[0], p)[0])(params)
  for name in ("u", "w", "b"):
    want = -np.linalg.solve(jac_forward, forward_grads[name].reshape(3, -1))
    np.testing.assert_allclose(inverse_grads[name].reshape(3, -1), want, atol=1e-8,
                               err_msg=name)


def _digits_method(method_name, variant="full", config_arg="smoke", **overrides):
  config = mnist.get_config(config_arg)
  config.method = method_name
  config.asvae.variant = variant
  config[method_name].update(overrides)
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  return data, asvae.make_method(config, spec)


def _moved(before, after, name):
  """Whether any of player ``name``'s parameters differ between two states."""
  return any(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.any(a != b)), before.params[name], after.params[name])))


def _grayscale8_spec_and_batch():
  """A spec and a batch of 16 random 8-bit 8x8 images (values k / 255)."""
  spec = DataSpec(shape=(8, 8, 1), kind="grayscale8", num_train=100)
  levels = jax.random.randint(jax.random.PRNGKey(0), (16, 8, 8, 1), 0, 256)
  return spec, {"x": levels.astype(jnp.float32) / 255.0, "index": jnp.arange(16, dtype=jnp.int32)}


@pytest.mark.parametrize("method_name,config_arg", [
    ("asvae", "smoke"), ("ali", "smoke"), ("asvae", "smoke,paper"), ("ali", "smoke,paper")])
def test_one_jitted_step_is_finite_and_moves_every_player(method_name, config_arg):
  data, method = _digits_method(method_name, config_arg=config_arg)
  batch = pipeline.get_batch(data, "train", 0, 8, 0)
  state = method.init(jax.random.PRNGKey(0), batch)
  new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(1))
  expected = {"encoder", "decoder"} | ({"psi1", "psi2"} if method_name == "asvae" else {"psi"})
  assert set(new_state.params) == expected
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  for player in expected:
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   state.params[player], new_state.params[player])
    assert all(jax.tree_util.tree_leaves(moved)), player
  eval_batch = next(pipeline.eval_batches(data, "test", 8))
  eval_batch.pop("mask")
  per_example = jax.jit(method.eval_step)(new_state.params, eval_batch, jax.random.PRNGKey(2))
  rmse = np.asarray(per_example["rmse"])
  assert rmse.shape == (8,) and np.all((rmse > 0) & (rmse < 1))


def test_variants_r_and_g_train_only_their_discriminator():
  for variant, disc in (("r", "psi1"), ("g", "psi2")):
    data, method = _digits_method("asvae", variant)
    batch = pipeline.get_batch(data, "train", 0, 8, 0)
    state = jax.eval_shape(method.init, jax.random.PRNGKey(0), batch)
    assert set(state.params) == {"encoder", "decoder", disc}
    assert method.name == f"asvae_{variant}"


@pytest.mark.parametrize("experiment,overrides,variant", [
    ("asvae", [], "asvae"), ("asvae", ["--config.asvae.variant=r"], "asvae_r"), ("ali", [], "ali")])
def test_smoke_run_through_the_launcher(tmp_path, experiment, overrides, variant):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", f"experiments.{experiment}", "--config=configs/mnist.py:smoke",
         f"--workdir={tmp_path}"] + overrides
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert results["method"] == experiment and results["variant"] == variant
  assert results["steps"] == 20 and results["dataset"] == "mnist"
  assert np.isfinite(results["nll_nats"]) and results["nll_nats"] > 0
  assert 0 < results["rmse"] < 1


def test_explicit_contrast_adds_the_encoders_log_ratio_to_f_psi1():
  """f_psi1 = [log q(z|x) - log p(z)] + g(x, z), with g the same network as without the flag."""
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  batch = pipeline.get_batch(data, "train", 0, 8, 0)

  def step_metrics(explicit_contrast):
    config = mnist.get_config("smoke")
    config.method = "asvae"
    # A frozen discriminator: the generator's step sees the same g_psi1 in both runs.
    config.asvae.update(explicit_contrast=explicit_contrast, disc_learning_rate=0.0)
    method = asvae.make_method(config, spec)
    state = method.init(jax.random.PRNGKey(0), batch)
    new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.params["psi1"],
                           state.params["psi1"])
    return metrics

  plain, contrast = step_metrics(False), step_metrics(True)
  assert abs(float(plain["explicit_kl"])) > 0.1  # the added term is far above the tolerance
  np.testing.assert_allclose(contrast["f_psi1"] - plain["f_psi1"], plain["explicit_kl"],
                             rtol=1e-4, atol=1e-4)
  # Two programs (with and without the contrast) compute it in float32: at XLA level 0 they
  # differed by 1.1e-6 relative, about 9 ulps.
  np.testing.assert_allclose(contrast["explicit_kl"], plain["explicit_kl"], rtol=1e-5)
  # The discriminator's loss (5.3) sees the contrast on real and fake pairs too.
  assert abs(float(contrast["d1_loss"]) - float(plain["d1_loss"])) > 1e-3


def test_default_config_trains_here_and_paper_keeps_the_dissertations_choices():
  default, paper = mnist.get_config(), mnist.get_config("paper")
  for name in ("asvae", "ali"):
    assert (default[name].disc_trunk, default[name].learning_rate) == ("mlp", 1e-3)
    assert default[name].disc_learning_rate == 1e-3
    assert (paper[name].disc_trunk, tuple(paper[name].disc_x_features)) == ("conv", (32, 64))
    assert (paper[name].learning_rate, paper[name].disc_learning_rate) == (1e-4, 1e-4)
  assert default.asvae.explicit_contrast and not paper.asvae.explicit_contrast
  assert (default.asvae.flow_length, paper.asvae.flow_length) == (10, 80)
  # binary MNIST's AS-VAE: the Bernoulli read and R1 + R2 penalties (README); ALI unchanged
  assert (default.asvae.decoder_pair_encoder_input, default.asvae.disc_gradient_penalty) == (
      "binary", 10.0)
  assert (paper.asvae.decoder_pair_encoder_input, paper.asvae.disc_gradient_penalty) == (
      "relaxed", 0.0)
  assert default.ali.disc_gradient_penalty == 0.0


@pytest.mark.parametrize("arg", ["ch5", "ch5,paper"])
def test_ch5_vae_baseline_shares_the_asvae_nets_and_optimizer(arg):
  config = mnist.get_config(arg)
  vae, section = config.vae, config.asvae
  assert vae.objective == "vae" and vae.latent_dim == section.latent_dim == 64
  assert tuple(vae.hidden_sizes) == tuple(section.encoder_hidden) == tuple(section.decoder_hidden)
  for key in ("activation", "learning_rate", "lr_schedule", "adam_b1", "adam_b2", "adam_eps"):
    assert vae[key] == section[key], key
  assert mnist.get_config().vae.latent_dim == 50  # only with ch5


@pytest.mark.parametrize("decoded_x", ["sample", "mean"])
def test_decoded_x_mean_shows_ali_the_logistic_means(decoded_x):
  """With decoded_x='mean' the discriminator never sees the decoder's log-scales, so ALI's
  step leaves their output weights where they were; a logistic draw moves them."""
  config = mnist.get_config("smoke")
  config.method = "ali"
  config.ali.update(likelihood="discretized_logistic", decoded_x=decoded_x)
  spec, batch = _grayscale8_spec_and_batch()
  method = asvae.make_method(config, spec)
  state = method.init(jax.random.PRNGKey(1), batch)
  new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(2))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  num_pixels = 8 * 8

  def output_kernel(params):  # [hidden, 2P]: logistic means, then log-scales
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if "kernel" in jax.tree_util.keystr(path) and leaf.shape[-1] == 2 * num_pixels]
    assert len(kernels) == 1
    return np.asarray(kernels[0])

  kernel, new_kernel = output_kernel(state.params["decoder"]), output_kernel(
      new_state.params["decoder"])
  mean_moved = np.any(new_kernel[:, :num_pixels] != kernel[:, :num_pixels])
  scale_moved = np.any(new_kernel[:, num_pixels:] != kernel[:, num_pixels:])
  assert mean_moved
  assert scale_moved == (decoded_x == "sample")


def test_decoded_x_is_checked():
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  for value, needle in (("mode", "choose one of"), ("mean", "8-bit data")):
    config = mnist.get_config("smoke")
    config.method = "ali"
    config.ali.decoded_x = value
    with pytest.raises(ValueError, match=needle):
      asvae.make_method(config, spec)
  from configs import fashion_mnist  # pylint: disable=import-outside-toplevel
  assert fashion_mnist.get_config().ali.decoded_x == "mean"
  assert fashion_mnist.get_config("paper").ali.decoded_x == "sample"
  assert fashion_mnist.get_config().asvae.decoded_x == "sample"


def test_input_gradient_sq_of_a_linear_logit_is_its_squared_weights():
  w_x, w_z = jnp.array([0.5, -2.0, 1.0]), jnp.array([3.0, 0.25])
  logit = lambda x, z: x @ w_x + z @ w_z + 1.0
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  z = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
  logits, grad_sq = adversarial.logits_and_input_gradient_sq(logit, x, z)
  np.testing.assert_allclose(logits, logit(x, z), rtol=1e-6)
  np.testing.assert_allclose(grad_sq, np.full(4, float(w_x @ w_x + w_z @ w_z)), rtol=1e-6)
  # A per-example nonlinear logit, against one jax.grad per example.
  net = lambda x, z: jnp.sum(jnp.sin(x), axis=1) * jnp.sum(z**2, axis=1)
  expected = [sum(float(jnp.sum(g**2)) for g in jax.grad(
      lambda a, b: net(a[None], b[None])[0], argnums=(0, 1))(x[i], z[i])) for i in range(4)]
  np.testing.assert_allclose(adversarial.logits_and_input_gradient_sq(net, x, z)[1], expected,
                             rtol=1e-5)


def _step_with_and_without(method_name, variant, **overrides):
  """One train step from the same state and key, with the smoke config and with ``overrides``
  set in its section: (config, spec, (state, metrics) without, (state, metrics) with)."""
  data, method = _digits_method(method_name, variant, disc_gradient_penalty=0.0)
  config = mnist.get_config("smoke")
  config.method = method_name
  config.asvae.variant = variant
  config[method_name].update(disc_gradient_penalty=0.0)
  config[method_name].update(overrides)
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  changed = asvae.make_method(config, spec)
  batch = pipeline.get_batch(data, "train", 0, 8, 0)
  state = method.init(jax.random.PRNGKey(0), batch)
  return (config, spec, jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(1)),
          jax.jit(changed.train_step)(state, batch, jax.random.PRNGKey(1)))


@pytest.mark.parametrize("method_name,variant", [("asvae", "full"), ("asvae", "g"),
                                                 ("ali", "full")])
def test_disc_gradient_penalty_enters_only_the_discriminators_step(method_name, variant):
  """gamma > 0 changes each discriminator's update by gamma / 2 times its mean squared input
  gradient (reported as <name>_grad_sq); gamma = 0 is the dissertation's step."""
  config, spec, (plain_state, plain_metrics), (new_state, metrics) = _step_with_and_without(
      method_name, variant, disc_gradient_penalty=10.0)
  names = asvae.DISCRIMINATORS[(method_name, variant if method_name == "asvae" else None)]
  for name in names:
    assert f"{name}_grad_sq" in metrics and f"{name}_grad_sq" not in plain_metrics
    assert float(metrics[f"{name}_grad_sq"]) > 0
    assert _moved(plain_state, new_state, name), name
  for key in ("d1_loss", "d2_loss", "d_loss"):  # the same pairs, so the same losses
    if key in plain_metrics:
      np.testing.assert_allclose(metrics[key], plain_metrics[key], rtol=1e-6)
  config[method_name].disc_gradient_penalty = -1.0
  with pytest.raises(ValueError, match="disc_gradient_penalty=-1.0 must be >= 0"):
    asvae.make_method(config, spec)


@pytest.mark.parametrize("variant", asvae.VARIANTS)
def test_negative_pair_terms_add_their_log_mean_exp_to_the_generator_loss_only(variant):
  """negative_pair_terms=True subtracts adversarial.negative_pair_term of f_psi1 (variants
  full, r) and f_psi2 (full, g) on their negative pairs from the loss of (5.16); the
  discriminators' step is the dissertation's."""
  config, spec, (plain_state, plain), (new_state, metrics) = _step_with_and_without(
      "asvae", variant, negative_pair_terms=True)
  names = [f"{n}_negative_term" for n in asvae.DISCRIMINATORS[("asvae", variant)]]
  assert sorted(k for k in metrics if k.endswith("_negative_term")) == sorted(names)
  assert not any(k.endswith("_negative_term") for k in plain)
  terms = sum(float(metrics[n]) for n in names)
  assert abs(terms) > 1e-3  # the check below can fail
  np.testing.assert_allclose(metrics["loss"], plain["loss"] - terms, rtol=1e-5, atol=1e-4)
  # f_psi1's negatives reach the decoder (its images), f_psi2's the encoder (its codes);
  # every other player's update is the dissertation's, bit for bit.
  reached = {"full": ("encoder", "decoder"), "r": ("decoder",), "g": ("encoder",)}[variant]
  for name in ("encoder", "decoder") + asvae.DISCRIMINATORS[("asvae", variant)]:
    assert _moved(plain_state, new_state, name) == (name in reached), name
  config.method, config.ali.negative_pair_terms = "ali", True
  with pytest.raises(ValueError, match="applies to the AS-VAE's"):
    asvae.make_method(config, spec)


def _frozen_zero_discriminator_steps(config, kind, *methods_config_overrides):
  """Initial state and one step per override dict, all from one state whose discriminators are
  zero (f = 0) and kept there by a zero learning rate; 8-bit or binary (digits) data."""
  config.asvae.disc_learning_rate = 0.0
  if kind == "grayscale8":
    config.asvae.likelihood = "discretized_logistic"
    spec, batch = _grayscale8_spec_and_batch()
  else:
    data = registry.load("digits")
    spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
    batch = pipeline.get_batch(data, "train", 0, 16, 0)
  steps, state = [], None
  for overrides in methods_config_overrides:
    config.asvae.update(overrides)
    method = asvae.make_method(config, spec)
    if state is None:
      state = method.init(jax.random.PRNGKey(1), batch)
      params = dict(state.params)
      for name in asvae.DISCRIMINATORS[("asvae", config.asvae.variant)]:
        params[name] = jax.tree_util.tree_map(jnp.zeros_like, params[name])
      state = state.replace(params=params)
    steps.append(jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(2)))
  return state, steps



@pytest.mark.parametrize("kind", ["grayscale8", "binary"])
def test_psi1_negative_term_reaches_the_decoder_through_the_explicit_contrast(kind):
  """With explicit_contrast, f_psi1 on (5.3)'s negatives is g + log q(z|x) - log p(z) at the
  decoded x. With g = 0 the negative term's gradient comes from that bracket alone: for 8-bit
  data it reaches the decoder through x; for binary data the encoder reads x's binary twin, a
  step function, so it does not. The encoder is held fixed in the term either way."""
  config = mnist.get_config("smoke")
  config.method = "asvae"
  config.asvae.update(variant="r", explicit_contrast=True)
  _, ((old, _), (new, metrics)) = _frozen_zero_discriminator_steps(
      config, kind, {"negative_pair_terms": False}, {"negative_pair_terms": True})
  assert np.isfinite(float(metrics["psi1_negative_term"]))
  assert not _moved(old, new, "psi1")  # zero learning rate: g stays 0
  assert not _moved(old, new, "encoder")
  assert _moved(old, new, "decoder") == (kind == "grayscale8")


@pytest.mark.parametrize("encoder_input", asvae.DECODER_PAIR_ENCODER_INPUTS)
def test_decoder_pair_log_q_at_the_bernoulli_draw_gives_the_decoder_no_gradient(encoder_input):
  """AS-VAE-g with f_psi2 = 0: the decoder's only gradient is that of log q(z | x_theta).
  Read at the binary draw it is zero, so the decoder stays put (Adam of a zero gradient);
  read at the relaxed x (the default) or straight through it moves the decoder. The encoder
  learns either way."""
  config = mnist.get_config("smoke")
  config.method = "asvae"
  config.asvae.variant = "g"
  assert config.asvae.decoder_pair_encoder_input == "binary"  # MNIST's default
  state, ((new, metrics),) = _frozen_zero_discriminator_steps(
      config, "binary", {"decoder_pair_encoder_input": encoder_input})
  assert np.isfinite(float(metrics["log_qz_given_x"]))
  assert _moved(state, new, "encoder")
  assert _moved(state, new, "decoder") == (encoder_input != "binary")
  assert not _moved(state, new, "psi2")
  config.asvae.decoder_pair_encoder_input = "gray"
  with pytest.raises(ValueError, match="decoder_pair_encoder_input='gray'; choose one of"):
    asvae.make_method(config, DataSpec(shape=(8, 8, 1), kind="grayscale17", num_train=100))


def test_straight_through_read_has_the_binary_value_and_the_relaxed_gradient():
  """'straight_through': the encoder reads the Bernoulli draw, the decoder gets d/dx of
  log q at that draw pulled back through the relaxed sample; 'binary' gives no gradient,
  'relaxed' the relaxed sample's own value."""
  logits = jnp.array([-2.0, 0.3, 1.5, 4.0])
  noise = jnp.array([0.5, -1.0, 0.2, -6.0])
  weights = jnp.array([1.0, -2.0, 3.0, 0.5])

  def read(mode, lg):
    relaxed = asvae.relaxed_bernoulli(lg, noise, 0.5)
    binary = (relaxed > 0.5).astype(relaxed.dtype)
    return asvae.decoder_pair_encoder_read(relaxed, binary, mode)

  np.testing.assert_array_equal(read("straight_through", logits), [0.0, 0.0, 1.0, 0.0])
  np.testing.assert_array_equal(read("binary", logits), [0.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(read("relaxed", logits),
                             jax.nn.sigmoid((logits + noise) / 0.5), rtol=1e-6)
  grads = {mode: jax.grad(lambda lg, m=mode: jnp.sum(weights * read(m, lg)))(logits)
           for mode in asvae.DECODER_PAIR_ENCODER_INPUTS}
  np.testing.assert_allclose(grads["straight_through"], grads["relaxed"], rtol=1e-6)
  s = jax.nn.sigmoid((logits + noise) / 0.5)
  np.testing.assert_allclose(grads["relaxed"], weights * s * (1 - s) / 0.5, rtol=1e-5)
  np.testing.assert_array_equal(grads["binary"], np.zeros(4))
  with pytest.raises(ValueError, match="decoder_pair_encoder_input='gray'"):
    asvae.decoder_pair_encoder_read(logits, logits, "gray")


def test_score_function_log_q_is_unbiased_for_the_gradient_of_the_expectation():
  """Against the exact gradient of E_{x ~ Bernoulli(sigmoid(theta))} f(x) over all 2^3
  binary x (f a fixed table, as log q(z|x) is for fixed phi and z): the two-draw
  leave-one-out estimate averages to it within 4 standard errors, and its value to E f."""
  theta = jnp.array([-0.7, 0.4, 1.2])
  table = jnp.array([-3.0, 1.0, 0.5, 4.0, -2.0, 2.5, 0.0, -1.5])  # f(x), x as bits
  bits = jnp.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], jnp.float32)

  def f(x):
    return table[jnp.sum(x * jnp.array([1, 2, 4]), axis=-1).astype(jnp.int32)]

  def log_p(x, logits):
    return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits), -1)

  exact = jax.grad(lambda t: jnp.sum(jnp.exp(log_p(bits, t)) * f(bits)))(theta)
  expectation = jnp.sum(jnp.exp(log_p(bits, theta)) * f(bits))

  def one(key):
    key_a, key_b = jax.random.split(key)
    x_a, x_b = (jax.random.bernoulli(k, jax.nn.sigmoid(theta)).astype(jnp.float32)
                for k in (key_a, key_b))
    estimate = lambda t: asvae.score_function_log_q(f(x_a), f(x_b), log_p(x_a, t), log_p(x_b, t))
    return estimate(theta), jax.grad(estimate)(theta)

  values, grads = jax.vmap(one)(jax.random.split(jax.random.PRNGKey(0), 200_000))
  standard_error = grads.std(0) / np.sqrt(len(grads))
  assert np.all(np.abs(grads.mean(0) - exact) < 4 * standard_error)
  assert np.all(standard_error < 0.05 * np.abs(exact))  # the check can tell the gradient from 0
  np.testing.assert_allclose(values.mean(), expectation, atol=4 * values.std() / np.sqrt(2e5))


def test_eval_elbo_and_rmse_of_a_flow_encoder_written_out():
  """The AS-VAE's evaluation with a planar-flow encoder, written out: one draw of
  ``z_0 = mean + exp(log_var / 2) eps`` (the step's key), ``z = flow(z_0)``, and
  ``log p(x | z) + log N(z; 0, I) - [log N(z_0; mean, var) - log|det dz/dz_0|]`` with the
  determinant of the flow's Jacobian by ``jax.jacfwd`` (not the flow's own log-det); x the
  test images binarized by their split positions (a batch past the first, so positions are
  not 0..B-1); ``rmse`` of the decoded flow image of the base mean against the gray images.
  A wrong sign of the log-det, a dropped prior, ``+log q``, ``std = exp(log_var)``, the code
  without its flow, or rmse against binarized images all passed every test before."""
  config = mnist.get_config("smoke")
  data, method = _digits_method("asvae", flow_length=2)
  batches = pipeline.eval_batches(data, "test", 8)
  next(batches)
  batch = next(batches)
  batch.pop("mask")
  assert int(batch["index"][0]) == 8
  params = method.init(jax.random.PRNGKey(0), batch).params
  params["encoder"]["flow"] = dict(params["encoder"]["flow"],  # a log-det far from zero
                                   u=5.0 * params["encoder"]["flow"]["u"],
                                   w=5.0 * params["encoder"]["flow"]["w"])
  key = jax.random.PRNGKey(1)
  out = jax.jit(method.eval_step)(params, batch, key)

  section = config.asvae
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  num_pixels = int(np.prod(data.shape))
  gray = np.asarray(batch["x"]).reshape(8, num_pixels)
  x = transforms.static_binarize(jnp.asarray(gray), batch["index"], config.eval.binarization_seed)
  mean, log_var = asvae.encoder_net(section, spec).apply(params["encoder"]["net"], x)
  eps = jax.random.normal(key, (1, 8, section.latent_dim), x.dtype)[0]
  z_0 = mean + jnp.exp(0.5 * log_var) * eps
  flow = params["encoder"]["flow"]
  forward = lambda v: flows.planar_flow_stack(v, flow)[0]  # pylint: disable=unnecessary-lambda-assignment
  z = forward(z_0)
  log_det = np.linalg.slogdet(np.asarray(jax.vmap(jax.jacfwd(forward))(z_0), np.float64))[1]
  assert np.mean(np.abs(log_det)) > 0.1, log_det
  z_0, z, mean, std = (np.asarray(a, np.float64) for a in (z_0, z, mean, jnp.exp(0.5 * log_var)))
  log_q = scipy.stats.norm.logpdf(z_0, mean, std).sum(-1) - log_det
  decoder = asvae.decoder_net(section, spec, num_pixels)
  logits = np.asarray(decoder.apply(params["decoder"], jnp.asarray(z, jnp.float32)), np.float64)
  x = np.asarray(x, np.float64)
  log_px_z = np.sum(x * logits - np.logaddexp(0.0, logits), -1)
  elbo = log_px_z + scipy.stats.norm.logpdf(z).sum(-1) - log_q
  np.testing.assert_allclose(out["elbo_nats"], elbo, rtol=1e-5, atol=1e-3)

  code = forward(jnp.asarray(mean, jnp.float32))
  probs = 1.0 / (1.0 + np.exp(-np.asarray(decoder.apply(params["decoder"], code), np.float64)))
  np.testing.assert_allclose(out["rmse"], np.sqrt(np.mean((probs - gray) ** 2, -1)), rtol=1e-5)


# ----------------------------------------------------------------------------- one step, written out

def _written_out_step(config, spec, state, batch, key):
  """One AS-VAE / ALI train step from the module docstrings, every player by plain SGD at rate 1
  (new = old - gradient): the step's noise from its five named keys; the discriminators'
  losses (5.3), (5.4) or (5.1) (softplus form) on pairs drawn with the current players, plus
  gamma / 2 times the mean over real and fake pairs of the squared input gradient of each
  network; then minus (5.14) (or ALI's generator loss) against the *updated* discriminators.
  log q(z|x) comes from the flow's Jacobian by ``jax.jacfwd``, not its own log-det. Returns
  (new params, generator loss)."""
  method_name = config.method
  section = config[method_name]
  variant = section.variant if method_name == "asvae" else None
  discs = asvae.DISCRIMINATORS[(method_name, variant)]
  discrete = section.likelihood == "discretized_logistic"
  tau, gamma = section.relaxation_temperature, section.disc_gradient_penalty
  contrast_on = method_name == "asvae" and section.explicit_contrast
  num_pixels = int(np.prod(spec.shape))
  encoder = asvae.encoder_net(section, spec)
  decoder = asvae.decoder_net(section, spec, num_pixels * (2 if discrete else 1))
  disc_net = JointDiscriminator(
      trunk=section.disc_trunk, x_features=tuple(section.disc_x_features),
      z_hidden=tuple(section.disc_z_hidden), joint_hidden=tuple(section.disc_joint_hidden),
      activation=section.disc_activation, image_shape=tuple(spec.shape),
      kernel_size=section.disc_kernel_size)

  names = ("data", "eps", "z_prior", "xi", "z_independent")
  keys = dict(zip(names, jax.random.split(key, len(names))))
  gray = batch["x"].reshape(batch["x"].shape[0], -1)
  shape = gray.shape[:1] + (section.latent_dim,)
  eps, z_prior, z_ind = (jax.random.normal(keys[n], shape, gray.dtype)
                         for n in ("eps", "z_prior", "z_independent"))
  xi = jax.random.logistic(keys["xi"], gray.shape, gray.dtype)
  if discrete:  # the discriminators see (255 x + u) / 256; x_fit is that or the 8-bit x
    x_shown = transforms.uniform_dequantize(keys["data"], gray, 256)
    x_fit = x_shown if section.dequantize else gray
  else:
    x_fit, x_shown = asvae.relaxed_binarize(keys["data"], gray, tau)

  def log_normal(z, mean=0.0, log_var=0.0):
    return jnp.sum(-0.5 * (z - mean) ** 2 * jnp.exp(-log_var) - 0.5 * log_var
                   - 0.5 * np.log(2 * np.pi), -1)

  def flow(p, z_0):
    return flows.planar_flow_stack(z_0, p["encoder"]["flow"])[0] if section.flow_length else z_0

  def log_det(p, z_0):  # [B] log|det dz/dz_0| from the Jacobian itself
    if not section.flow_length:
      return jnp.zeros(z_0.shape[:1])
    jac = jax.vmap(jax.jacfwd(lambda v: flow(p, v)))(z_0)
    return jnp.linalg.slogdet(jac)[1]

  def encode(p, x):
    mean, log_var = encoder.apply(p["encoder"]["net"], x)
    z_0 = mean + jnp.exp(0.5 * log_var) * eps
    return flow(p, z_0), log_normal(z_0, mean, log_var) - log_det(p, z_0)

  def log_q_at(p, x, z):
    mean, log_var = encoder.apply(p["encoder"]["net"], x)
    z_0 = flows.planar_flow_stack_inverse(z, p["encoder"]["flow"]) if section.flow_length else z
    return log_normal(z_0, mean, log_var) - log_det(p, z_0)

  def decode_sample(p):
    out = decoder.apply(p["decoder"], z_prior)
    if not discrete:
      return jax.nn.sigmoid((out + xi) / tau)
    mean, log_scale = jax.nn.sigmoid(out[:, :num_pixels]), out[:, num_pixels:]
    return jnp.clip(mean + jnp.exp(log_scale) * xi, 0.0, 1.0)

  def log_px(p, z):
    out = decoder.apply(p["decoder"], z)
    if not discrete:
      return jnp.sum(x_fit * out - jax.nn.softplus(out), -1)
    mean, log_scale = jax.nn.sigmoid(out[:, :num_pixels]), out[:, num_pixels:]
    assert not section.dequantize  # the 8-bit case checked here: the discretized logistic
    return likelihoods.discretized_logistic_log_prob(x_fit, mean, log_scale).sum(-1)

  def f(p, name, x, z):
    return disc_net.apply(p[name], x, z)

  def input_grad_sq(p, name, x, z):
    grads = jax.vmap(jax.grad(lambda a, b: f(p, name, a[None], b[None])[0], (0, 1)))(x, z)
    return jnp.sum(grads[0] ** 2, -1) + jnp.sum(grads[1] ** 2, -1)

  params = state.params
  z_enc, log_q_enc = jax.lax.stop_gradient(encode(params, x_fit))
  x_dec = jax.lax.stop_gradient(decode_sample(params))
  pairs = {"psi1": ((x_shown, z_enc), (x_dec, z_ind)),
           "psi2": ((x_dec, z_prior), (x_shown, jnp.roll(z_enc, 1, axis=0))),
           "psi": ((x_shown, z_enc), (x_dec, z_prior))}
  contrast = (0.0, 0.0)
  if contrast_on:
    twin = (x_dec > 0.5).astype(x_dec.dtype)
    contrast = jax.lax.stop_gradient(
        (log_q_enc - log_normal(z_enc), log_q_at(params, twin, z_ind) - log_normal(z_ind)))

  def disc_loss(p):
    total = 0.0
    for name in discs:
      (x_r, z_r), (x_f, z_f) = pairs[name]
      real, fake = f(p, name, x_r, z_r), f(p, name, x_f, z_f)
      if name == "psi1":
        real, fake = real + contrast[0], fake + contrast[1]
      total += jnp.mean(jax.nn.softplus(-real) + jax.nn.softplus(fake))
      if gamma:
        total += gamma / 2 * 0.5 * (jnp.mean(input_grad_sq(p, name, x_r, z_r))
                                    + jnp.mean(input_grad_sq(p, name, x_f, z_f)))
    return total

  disc_params = {n: params[n] for n in discs}
  disc_grads = jax.grad(disc_loss)(disc_params)
  new = dict(params)
  for n in discs:
    new[n] = jax.tree_util.tree_map(lambda a, g: a - g, params[n], disc_grads[n])

  def gen_loss(g):
    p = {**new, **g}
    z, log_q = encode(p, x_fit)
    x_d = decode_sample(p)
    if method_name == "ali":
      f_q, f_p = f(p, "psi", x_shown, z), f(p, "psi", x_d, z_prior)
      if section.non_saturating:
        return jnp.mean(jax.nn.softplus(f_q) + jax.nn.softplus(-f_p))
      return jnp.mean(-jax.nn.softplus(-f_q) - jax.nn.softplus(f_p))
    loss = 0.0
    if "psi1" in discs:
      f_1 = f(p, "psi1", x_shown, z) + ((log_q - log_normal(z)) if contrast_on else 0.0)
      loss -= jnp.mean(log_px(p, z) - f_1)
    if "psi2" in discs:
      loss -= jnp.mean(log_q_at(p, x_d, z_prior) - f(p, "psi2", x_d, z_prior))
    return loss

  gen = {"encoder": params["encoder"], "decoder": params["decoder"]}
  loss, gen_grads = jax.value_and_grad(gen_loss)(gen)
  for n in gen:
    new[n] = jax.tree_util.tree_map(lambda a, g: a - g, params[n], gen_grads[n])
  return new, loss


@pytest.mark.parametrize("case", ["asvae_binary_flow_contrast_penalty", "ali_8bit_non_saturating",
                                  "asvae_r_8bit_not_dequantized"])
def test_train_step_equals_the_algorithm_written_out(case, monkeypatch):
  """Every player's one-step update (plain SGD at rate 1 in place of Adam, so the update is
  the gradient itself) against ``_written_out_step``. The binary case has a 2-layer planar
  flow (made far from the identity), the explicit contrast, R1 + R2 at gamma = 3 and
  log q of decoder pairs at the relaxed x; the 8-bit cases draw the clipped logistic with
  log-scales of -1.5, so exp(log_scale) and exp(log_scale / 2) differ. A log-det sign, a
  skipped flow inverse, a stopped contrast gradient, a contrast at the wrong x, swapped real
  and fake pairs, the generator against the pre-update discriminators, the penalty's factor
  or mean, ALI's ignored non_saturating, the draw's scale and an ignored
  ``dequantize=False`` all passed every test before."""
  monkeypatch.setattr(asvae, "make_optimizer", lambda *args, **kwargs: optax.sgd(1.0))
  config = mnist.get_config("smoke")
  binary = case.startswith("asvae_binary")
  config.method = "asvae" if case.startswith("asvae") else "ali"
  section = config[config.method]
  if binary:
    section.update(variant="full", flow_length=2, explicit_contrast=True, disc_gradient_penalty=3.0,
                   decoder_pair_encoder_input="relaxed", negative_pair_terms=False)
    data = registry.load("digits")
    spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
    batch = pipeline.get_batch(data, "train", 0, 8, 0)
  else:
    section.update(likelihood="discretized_logistic", decoded_x="sample", flow_length=0,
                   disc_gradient_penalty=0.0)
    if config.method == "ali":
      assert section.non_saturating  # the default; the written-out step reads the flag too
    else:
      section.update(variant="r", explicit_contrast=False, dequantize=False)
    spec, batch = _grayscale8_spec_and_batch()
    batch = {"x": batch["x"][:8], "index": batch["index"][:8]}
  method = asvae.make_method(config, spec)
  state = method.init(jax.random.PRNGKey(0), batch)
  params = dict(state.params)
  if binary:  # a flow far from the identity, so its log-det and inverse matter
    params["encoder"] = dict(params["encoder"], flow=dict(
        params["encoder"]["flow"], u=5.0 * params["encoder"]["flow"]["u"],
        w=5.0 * params["encoder"]["flow"]["w"]))
  else:  # decoder log-scales -1.5 rather than about 0 (the bias of the outputs' second half)
    decoder = params["decoder"]
    last = sorted(decoder["params"])[-1]
    bias = decoder["params"][last]["bias"]
    bias = bias.at[bias.shape[0] // 2:].set(-1.5)
    params["decoder"] = {"params": dict(decoder["params"], **{last: dict(
        decoder["params"][last], bias=bias)})}
  state = state.replace(params=params)
  key = jax.random.PRNGKey(3)
  new_state, metrics = jax.jit(method.train_step)(state, batch, key)
  expected, loss = jax.jit(functools.partial(_written_out_step, config, spec))(state, batch, key)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-4, atol=1e-4)
  assert set(new_state.params) == set(expected)
  for player in expected:
    old, leaves = state.params[player], jax.tree_util.tree_leaves_with_path(expected[player])
    for (path, want), have, before in zip(leaves, jax.tree_util.tree_leaves(new_state.params[player]),
                                          jax.tree_util.tree_leaves(old), strict=True):
      want, have = np.asarray(want - before), np.asarray(have - before)  # the updates
      scale = np.max(np.abs(want))
      assert scale > 0, (player, path)
      np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5 * scale,
                                 err_msg=f"{player} {jax.tree_util.keystr(path)}")
