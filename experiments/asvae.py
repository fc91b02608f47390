"""The Adversarial Symmetric VAE (chapter 5) through the shared loop.

  python -m experiments.asvae --config=configs/mnist.py                             # AS-VAE
  python -m experiments.asvae --config=configs/mnist.py --config.asvae.variant=r    # AS-VAE-r
  python -m experiments.asvae --config=configs/mnist.py --config.asvae.variant=g    # AS-VAE-g
  python -m experiments.asvae --config=configs/mnist.py:paper    # encoder flow of length 80
  python -m experiments.asvae --config=configs/mnist.py:smoke --workdir=/tmp/asvae
"""

from absl import flags
from ml_collections import config_flags

from dgm_jax.train import launch

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py[:args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: a new folder in ./runs).")

if __name__ == "__main__":
  launch.run_app("asvae", _CONFIG, _WORKDIR)
