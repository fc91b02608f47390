"""The Poisson factor analysis check of section 4.5.1 (Fig. 4.2): Stein VAE and VAE against Gibbs.

Arguments after the colon, comma-separated:
  smoke    a few steps, short chains and a tiny evaluation (seconds; what CI runs)

The data is the 'toy' setting of ``dgm_jax.data.synthetic.PFA_SETTINGS`` (P = 50 words,
V = 5 factors with overlapping loadings, 5,000 training and 20 test documents); any entry
can be overridden, e.g.

  python -m experiments.pfa --config=configs/pfa.py --config.data.options.num_test=50
"""

import ml_collections

from configs import common


def get_config(arg=None):
  args = common.parse_args(arg, {"smoke"})
  config = common.base_config("pfa", batch_size=32)
  config.data.options = ml_collections.ConfigDict(dict(setting="toy", num_test=20))
  config.train.update(num_steps=3000, log_every=100, eval_every=3000, ckpt_every=3000,
                      tensorboard=False)
  # The importance-sample keys of base_config are unused: the toy compares posterior samples.
  config.eval.update(num_posterior_samples=2000, plot_point=0, num_plot_factors=3)
  # Section 4.5.1: 2,000 burn-in sweeps, 2,500 collection sweeps, every 10th kept; 8 chains
  # per document (2,000 draws) shrink the Monte Carlo error of the reference variances.
  config.gibbs = ml_collections.ConfigDict(dict(num_burnin=2000, num_draws=2500, thin=10,
                                                num_chains=8))
  # The dissertation's recognition model is an MLP with 100 hidden units and M = 100 particles
  # (4.5). One layer of 256 ReLU units on x / (4 std(x_train)), minibatches of 32, K = 4
  # fitting steps, Adam from 5e-3 decaying to 1e-4 and SVGD steps of 0.02 in u = log z fit the
  # toy's posteriors in 3,000 iterations on one CPU core (about a minute and a half). With the
  # inputs log(1 + x) or x / std the posterior means were about 1.5x further off, and smaller
  # SVGD steps leave the particles over-dispersed after 3,000 iterations.
  config.stein_vae = ml_collections.ConfigDict(dict(
      encoder_hidden=(256,), activation="relu", input_scale=4.0, num_particles=100,
      encoder_steps=4, svgd_step_size=2e-2, bandwidth_convention="median",
      learning_rate=5e-3, lr_schedule="geometric", final_lr_fraction=0.02,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8))
  # Same budget: as many Adam updates (num_steps * encoder_steps), the same batches, as many
  # codes per example as particles, the same network.
  config.vae = common.matched_vae_section(config.stein_vae)
  if "smoke" in args:
    config.data.options.update(num_train=64, num_valid=8, num_test=4)
    config.train.update(num_steps=20, log_every=5, eval_every=20, ckpt_every=20)
    config.data.batch_size = 8
    config.eval.update(num_posterior_samples=64)
    config.gibbs.update(num_burnin=20, num_draws=40, thin=2, num_chains=2)
    config.stein_vae.update(encoder_hidden=(16,), num_particles=8, encoder_steps=1)
    config.vae.update(hidden_sizes=(16,))
  return config
