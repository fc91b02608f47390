"""Fashion-MNIST (50K/10K/10K, 8-bit grayscale): VAE, AS-VAE and ALI in bits/dim (section 5.3.1).

Pixels are modeled as 8-bit values with a discretized logistic decoder
(``likelihood='discretized_logistic'``): training on uniformly dequantized
images, evaluation on the discrete bins, so ``results.json`` reports
``bits_per_dim`` beside ``nll_nats``, ``rmse`` and ``classifier_score``. The
networks are those of ``configs/mnist.py`` (the decoder outputs a logistic mean
and log-scale per pixel instead of logits); 300 epochs by default.

Arguments after the colon, comma-separated:
  smoke    a few steps and a tiny evaluation (seconds; what CI runs)
  paper    the longer schedules of ``configs/mnist.py:paper`` (VAE: Burda et al.'s
           3,280 epochs; AS-VAE: 80 planar flows)
  iwae     the IWAE objective with k = 5 (``vae`` section)
  ch5      the VAE baseline of the AS-VAE table: the ``vae`` section takes the ``asvae``
           section's nets and optimizer

  python -m experiments.vae --config=configs/fashion_mnist.py
  python -m experiments.asvae --config=configs/fashion_mnist.py
  python -m experiments.ali --config=configs/fashion_mnist.py
"""

from configs import common

STEPS_PER_EPOCH = 500  # 50,000 training images, batch 100
LIKELIHOOD = "discretized_logistic"


def get_config(arg=None):
  args = common.parse_args(arg, {"smoke", "paper", "iwae", "ch5"})
  config = common.base_config("fashion_mnist", batch_size=100)
  config.train.update(num_steps=300 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                      eval_every=25 * STEPS_PER_EPOCH, ckpt_every=5 * STEPS_PER_EPOCH)
  config.vae = common.vae_section(likelihood=LIKELIHOOD)
  config.asvae = common.asvae_section("asvae", smoke="smoke" in args, paper="paper" in args,
                                      likelihood=LIKELIHOOD)
  config.ali = common.asvae_section("ali", smoke="smoke" in args, paper="paper" in args,
                                    likelihood=LIKELIHOOD)
  if "paper" not in args:  # ALI's generator shows its logistic means (models.asvae docstring)
    config.ali.decoded_x = "mean"
  if "iwae" in args:
    config.vae.update(objective="iwae", num_samples=5)
  if "paper" in args:
    config.train.num_steps = 3280 * STEPS_PER_EPOCH
    config.train.eval_every = 100 * STEPS_PER_EPOCH
    config.vae.lr_schedule = "burda"
  if "ch5" in args:
    common.match_vae_to_asvae(config)
  if "smoke" in args:
    common.make_smoke(config)
    config.vae.update(hidden_sizes=(32,), latent_dim=8)
  return config
