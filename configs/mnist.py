"""MNIST (50K/10K/10K, dynamically binarized): the VAE / IWAE baselines of section 4.5.2.

Arguments after the colon, comma-separated:
  smoke    a few steps and a tiny evaluation (seconds; what CI runs)
  paper    Burda et al.'s full schedule: 3,280 epochs, lr 1e-3 * 10^(-i/7)
  iwae     the IWAE objective with k = 5 (``vae`` section)

  python -m experiments.vae --config=configs/mnist.py:iwae --config.vae.num_samples=50
"""

from configs import common

STEPS_PER_EPOCH = 500  # 50,000 training images, batch 100


def get_config(arg=None):
  args = common.parse_args(arg, {"smoke", "paper", "iwae"})
  config = common.base_config("mnist", batch_size=100)
  config.train.update(num_steps=300 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                      eval_every=25 * STEPS_PER_EPOCH, ckpt_every=5 * STEPS_PER_EPOCH)
  config.vae = common.vae_section()
  if "iwae" in args:
    config.vae.update(objective="iwae", num_samples=5)
  if "paper" in args:
    config.train.num_steps = 3280 * STEPS_PER_EPOCH
    config.train.eval_every = 100 * STEPS_PER_EPOCH
    config.vae.lr_schedule = "burda"
  if "smoke" in args:
    common.make_smoke(config)
  return config
