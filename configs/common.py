"""Sections every config shares (DESIGN section 3) and the ``:args`` parser."""

import ml_collections

__all__ = ["base_config", "parse_args", "vae_section"]


def parse_args(arg, allowed):
  """Parses ``'smoke,paper,variant=x'`` into a dict; unknown words are an error."""
  args = {}
  for word in filter(None, (arg or "").split(",")):
    key, _, value = word.partition("=")
    if key not in allowed:
      raise ValueError(f"unknown config argument {key!r}; allowed: {', '.join(sorted(allowed))}")
    args[key] = value or True
  return args


def base_config(dataset, batch_size):
  """seed, data, train and eval sections with production defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = ""
  config.distributed = False
  config.data = ml_collections.ConfigDict(dict(
      name=dataset, data_dir="", batch_size=batch_size, options={}))
  config.train = ml_collections.ConfigDict(dict(
      num_steps=100_000, log_every=500, eval_every=10_000, ckpt_every=5_000, tensorboard=True))
  config.eval = ml_collections.ConfigDict(dict(
      num_importance_samples=5000,    # K for the test NLL (Burda et al.)
      valid_importance_samples=100,   # K for periodic validation NLL (0: skip)
      batch_size=100, max_chunk=500, max_valid_examples=2000, binarization_seed=0))
  return config


def vae_section(**overrides):
  """Burda et al.'s one-stochastic-layer model: 784-200-200-50, tanh, Bernoulli pixels."""
  section = ml_collections.ConfigDict(dict(
      objective="vae", num_samples=1, hidden_sizes=(200, 200), latent_dim=50,
      activation="tanh", learning_rate=1e-3, lr_schedule="geometric", final_lr_fraction=0.1,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-4))
  section.update(overrides)
  return section


def make_smoke(config):
  """Shrinks a config to seconds: a few steps, tiny evaluation."""
  config.train.update(num_steps=20, log_every=5, eval_every=10, ckpt_every=10, tensorboard=True)
  config.data.batch_size = 16
  config.eval.update(num_importance_samples=8, valid_importance_samples=8, batch_size=32,
                     max_chunk=8, max_valid_examples=64)
  return config


def stein_vae_section(**overrides):
  """Section 4.5.2: z of 50, two deterministic layers of 200 tanh units, Adam at 2e-4.

  ``num_particles`` (M) and the importance-sample count fit a CPU by default; the
  dissertation's M = 100 is the ``:paper`` variant.
  """
  section = ml_collections.ConfigDict(dict(
      latent_dim=50, encoder_hidden=(200, 200), decoder_hidden=(200, 200), activation="tanh",
      num_particles=10, importance_weighted=False, decoder_samples=1, prior_std=1.0,
      svgd_step_size=1e-3, bandwidth_convention="liu_wang", encoder_steps=1,
      eval_elbo_samples=10,
      learning_rate=2e-4, lr_schedule="constant", final_lr_fraction=1.0,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8))
  section.update(overrides)
  return section
