"""ALI (Dumoulin et al. 2017; objective (5.1)), the adversarial baseline of chapter 5.

  python -m experiments.ali --config=configs/mnist.py
  python -m experiments.ali --config=configs/mnist.py --config.ali.non_saturating=False
  python -m experiments.ali --config=configs/mnist.py:smoke --workdir=/tmp/ali
"""

from absl import flags
from ml_collections import config_flags

from dgm_jax.train import launch

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py[:args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: a new folder in ./runs).")

if __name__ == "__main__":
  launch.run_app("ali", _CONFIG, _WORKDIR)
