"""The Poisson factor analysis check of section 4.5.1 (Fig. 4.2): Stein VAE and VAE against Gibbs.

Both encoders are trained with the loadings fixed at the true ones; a Gibbs sampler gives the
reference posterior of every test document (results.json, samples/pfa_marginals.png).

  python -m experiments.pfa --config=configs/pfa.py [--config.seed=1] [--workdir=/tmp/pfa]
"""

import json
import os
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from dgm_jax.models import pfa_toy, posterior_toy
from dgm_jax.train import launch, writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file: configs/pfa.py[:smoke].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: a new folder in ./runs).")


def main(argv):
  config = _CONFIG.value
  workdir, data = launch.start_toy(config, argv, _WORKDIR.value, "pfa",
                                   "--config=configs/pfa.py[:smoke]")
  toy, stein, vae = pfa_toy.toy_from_dataset(data), config.stein_vae, config.vae
  keys = jax.random.split(jax.random.PRNGKey(config.seed), 5)
  start, steps, batch = time.perf_counter(), config.train.num_steps, config.data.batch_size
  x_train, x_test = data.splits["train"], data.splits["test"]
  vae_steps = steps * stein.encoder_steps  # as many Adam updates as the Stein encoder's
  stein_params, stein_metrics = pfa_toy.train_stein(keys[0], x_train, toy, stein, steps, batch)
  vae_params, vae_metrics = pfa_toy.train_vae(keys[1], x_train, toy, vae, vae_steps, batch)
  jax.block_until_ready((stein_params, vae_params))
  train_time = time.perf_counter() - start
  launch.write_toy_history(workdir, posterior_toy.history_records(
      {"stein": stein_metrics, "vae": vae_metrics}, config.train.log_every))
  # Twice the chains: the second half, scored like a method, measures the reference's own error.
  draws = pfa_toy.gibbs_sample(keys[2], x_test, toy.loadings, toy.shape, toy.rate,
                               **{**dict(config.gibbs), "num_chains": 2 * config.gibbs.num_chains})
  reference, check = np.split(np.asarray(draws), 2, axis=1)
  gibbs_time = time.perf_counter() - start - train_time
  num, dim = config.eval.num_posterior_samples, toy.loadings.shape[1]
  samples = {"gibbs": check,
             "stein": pfa_toy.stein_samples(stein_params, stein, keys[3], x_test, dim, num),
             "vae": pfa_toy.vae_samples(vae_params, vae, keys[4], x_test, dim, num)}
  report, variances = pfa_toy.marginal_variance_errors(samples, reference)
  shown = {"gibbs": reference, "vae": samples["vae"], "stein": samples["stein"]}
  pfa_toy.save_marginals_figure(os.path.join(workdir, "samples", "pfa_marginals.png"), shown,
                                variances, config.eval.plot_point, config.eval.num_plot_factors)
  results = {"method": "pfa_toy", "dataset": data.name, "setting": data.extras["setting"],
             "data_source": data.source, "num_examples": data.num_examples, "steps": steps,
             "vae_steps": vae_steps, "wall_s": train_time, "gibbs_wall_s": gibbs_time,
             "eval_wall_s": time.perf_counter() - start - train_time, "split": "test",
             "num_posterior_samples": num, "num_gibbs_draws": reference.shape[1], **report}
  writers.write_json(os.path.join(workdir, "results.json"), results)
  print(json.dumps({k: results[k] for k in ("wall_s", "gibbs_wall_s", "gibbs", "stein", "vae")}))


if __name__ == "__main__":
  launch.run_main(main)
