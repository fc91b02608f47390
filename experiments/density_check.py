"""Is a trained Stein encoder's change-of-variables density the density of its codes?

The Stein VAE's q(z | x) = q0(xi) |det df/dxi|^-1 (4.2.2, 4.5.2) holds where f_eta is
one-to-one in xi; where it folds, the ELBO, the S-ELBO and the VIWAE's weights overstate
log p(x) by the log of the mean number of preimages. For each of the first test images
this reports ``stein_vae.density_check``: the fraction of codes whose det df/dxi has the
less common sign (a fold's mark) and log E_q[g / q^] for a Gaussian g fitted to the codes
(0 up to sampling error when the density is q's; log 2 for a two-to-one f).

  python -m experiments.density_check --workdir=runs/<stein run> --num_examples=100

Writes ``density_check.json`` in the workdir and prints it as one JSON line.
"""

import json
import os
import time

import jax
import numpy as np
from absl import flags

from dgm_jax.data import pipeline, transforms
from dgm_jax.models import stein_vae
from dgm_jax.train import launch, runs, writers
from dgm_jax.train.guards import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a Stein VAE or VIWAE run.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 100, "First test images to check.",
                                     lower_bound=1)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000,
                                    "Draws of xi per image, for the fit and for the estimate.",
                                    lower_bound=2)
_SEED = flags.DEFINE_integer("seed", 0, "Key of the draws.")
flags.mark_flags_as_required(["workdir"])


def check(workdir, num_examples, num_samples, seed):
  """Per-image ``(minority sign fraction, log ratio)`` of the first test images, summarized."""
  config = runs.read_config(workdir)
  section = config.get(config.method, {})
  if config.method != "stein_vae" or section.get("encoder_arch", "mlp") != "mlp":
    raise ConfigError(f"{workdir}: method {config.method!r} with encoder_arch="
                      f"{section.get('encoder_arch', 'mlp')!r}; the check reads the MLP "
                      "encoder f_eta(x, xi) of a Stein VAE or VIWAE run")
  data = runs.load_data(config)
  run = runs.load_run(workdir, data=data)
  encoder, _ = stein_vae.make_nets(section, runs.data_spec(data))
  eta = run.state.params["encoder"]
  one = jax.jit(lambda x, key: stein_vae.density_check(
      lambda xi: encoder.apply(eta, x, xi), key, num_samples, section.latent_dim))
  rows, start, key = [], time.time(), jax.random.PRNGKey(seed)
  for batch in pipeline.eval_batches(data, "test", config.eval.batch_size):
    mask = batch.pop("mask")
    x = transforms.static_binarize(stein_vae.flatten(batch["x"]), batch["index"],
                                   config.eval.binarization_seed)
    for i in np.flatnonzero(mask):
      rows.append([float(v) for v in one(x[i], jax.random.fold_in(key, len(rows)))])
      if len(rows) == num_examples:
        break
    if len(rows) == num_examples:
      break
  rows = np.asarray(rows)
  return {"workdir": workdir, "steps": int(run.state.step), "num_examples": len(rows),
          "num_samples": num_samples,
          "minority_sign_fraction": float(rows[:, 0].mean()),
          "images_with_both_signs": int(np.sum(rows[:, 0] > 0)),
          "log_ratio_mean": float(rows[:, 1].mean()),
          "log_ratio_standard_error": float(rows[:, 1].std(ddof=1) / np.sqrt(len(rows)))
          if len(rows) > 1 else None,
          "wall_s": time.time() - start}


def main(argv):
  del argv
  try:
    result = check(_WORKDIR.value, _NUM_EXAMPLES.value, _NUM_SAMPLES.value, _SEED.value)
  except launch.KNOWN_ERRORS as error:
    launch.fail(f"{type(error).__name__}: {error}")
  writers.write_json(os.path.join(_WORKDIR.value, "density_check.json"), result)
  print(json.dumps(result))


if __name__ == "__main__":
  launch.run_main(main)
