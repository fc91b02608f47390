"""Stein VAE and Stein VIWAE (chapter 4) through the shared loop.

  python -m experiments.stein_vae --config=configs/mnist.py
  python -m experiments.stein_vae --config=configs/mnist.py:viwae       # Stein VIWAE
  python -m experiments.stein_vae --config=configs/mnist.py:smoke --workdir=/tmp/stein_vae
"""

from absl import flags
from ml_collections import config_flags

from dgm_jax.train import launch

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py[:args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: a new folder in ./runs).")

if __name__ == "__main__":
  launch.run_app("stein_vae", _CONFIG, _WORKDIR)
