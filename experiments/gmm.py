"""The Gaussian-mixture toy of section 4.5.1 (Fig. 4.1): Stein recognition model vs VAE.

Both encoders are trained with the decoder fixed at the true one, then compared
with the exact posterior at the test points (results.json, samples/posterior.png).

  python -m experiments.gmm --config=configs/gmm.py              # dissertation setting
  python -m experiments.gmm --config=configs/gmm.py:bimodal      # two-mode posteriors
  python -m experiments.gmm --config=configs/gmm.py:bimodal,shifted  # unequal mode weights
  python -m experiments.gmm --config=configs/gmm.py:smoke --workdir=/tmp/gmm
"""

import json
import os
import time

import jax
from absl import flags
from ml_collections import config_flags

from dgm_jax.models import posterior_toy as toy_lib
from dgm_jax.train import launch, writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/gmm.py[:args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: a new folder in ./runs).")


def main(argv):
  config = _CONFIG.value
  workdir, data = launch.start_toy(config, argv, _WORKDIR.value, "gmm",
                                   "--config=configs/gmm.py[:paper|:bimodal[,shifted]|:smoke]")
  toy, stein, vae = toy_lib.toy_from_dataset(data), config.stein_vae, config.vae
  train_key, vae_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  start, steps = time.perf_counter(), config.train.num_steps
  x_train = data.splits["train"]
  stein_params, stein_metrics = toy_lib.train_stein(train_key, x_train, toy, stein, steps,
                                                    config.data.batch_size)
  vae_params, vae_metrics = toy_lib.train_vae(vae_key, x_train, toy, vae, steps * stein.encoder_steps,
                                              config.data.batch_size)
  jax.block_until_ready((stein_params, vae_params))
  train_time = time.perf_counter() - start
  launch.write_toy_history(workdir, toy_lib.history_records(
      {"stein": stein_metrics, "vae": vae_metrics}, config.train.log_every))
  x_test, num, dim = data.splits["test"], config.eval.num_posterior_samples, toy.mu.shape[0]
  keys = jax.random.split(eval_key, 4)
  samples = {"exact": toy_lib.exact_samples(keys[0], x_test, toy, num),
             "stein": toy_lib.stein_samples(stein_params, stein, keys[1], x_test, dim, num),
             "vae": toy_lib.vae_samples(vae_params, vae, keys[2], x_test, dim, num)}
  posterior = tuple(data.extras["test_posterior"][k] for k in ("log_weights", "means", "covs"))
  reference = toy_lib.exact_samples(keys[3], x_test, toy, num)  # a second, independent draw
  report, exact_weights, weights = toy_lib.evaluate(samples, reference, posterior)
  toy_lib.save_posterior_figure(os.path.join(workdir, "samples", "posterior.png"), x_test,
                                samples, config.eval.num_plot_points)
  results = {"method": "gmm_toy", "dataset": data.name, "setting": data.extras["setting"],
             "mu": [float(m) for m in data.extras["mu"]],
             "data_source": data.source, "num_examples": data.num_examples, "steps": steps,
             "vae_steps": steps * stein.encoder_steps, "wall_s": train_time,
             "eval_wall_s": time.perf_counter() - start - train_time, "split": "test",
             "num_posterior_samples": num, "exact_mode_weights": exact_weights.tolist(),
             "mode_weights": {k: v.tolist() for k, v in weights.items()}, **report}
  writers.write_json(os.path.join(workdir, "results.json"), results)
  print(json.dumps({k: results[k] for k in ("setting", "wall_s", "exact", "stein", "vae")}))


if __name__ == "__main__":
  launch.run_main(main)
