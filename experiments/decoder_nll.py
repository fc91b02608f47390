"""Is it the decoder or the encoder? NLL of finished runs under two proposals.

For each ``--workdir`` (a finished or checkpointed run, restored by
``dgm_jax.train.runs.load_run``), on the first ``--num_examples`` images of
``--split`` (test by default; train against test shows overfitting) with
K = ``--num_samples`` importance samples each:

- ``nll_nats``: the run's own estimate (its encoder as the proposal; for the
  Stein VAE the S-ELBO of 4.5.2 with the change-of-variables density);
- ``nll_laplace_nats``: the same model's log p(x) importance sampled from a
  Laplace approximation of p(z | x) (a Gaussian at the mode of log p(x, z) found
  by Newton steps from the encoder's code, ``dgm_jax.eval.nll``), which needs the
  decoder only.

Both are stochastic lower bounds on log p(x), so both NLLs are upper bounds:
when the Laplace NLL is far below the encoder's, the encoder is a poor proposal;
when both are high, the decoder itself assigns the data low likelihood. Writes
``decoder_nll.json`` (``decoder_nll_train.json``, ``decoder_nll_valid.json`` for
the other splits) into each workdir and prints one JSON line per run.

  python -m experiments.decoder_nll --workdir=runs/vae --workdir=runs/stein_vae
"""

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from dgm_jax.data import pipeline
from dgm_jax.train import launch, runs, writers
from dgm_jax.train.guards import ConfigError

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "Workdir of a run (repeat).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 1000, "First images of the split to evaluate.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "valid", "test"],
                           "Split to evaluate ('train' against 'test' shows overfitting).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Importance samples K per image.")
_SEED = flags.DEFINE_integer("seed", 0, "Key of the importance samples.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  for workdir in _WORKDIRS.value:
    try:
      result = evaluate(workdir, _NUM_EXAMPLES.value, _NUM_SAMPLES.value, _SEED.value,
                        _SPLIT.value)
    except launch.KNOWN_ERRORS as error:
      sys.exit(f"error: {type(error).__name__}: {error}")
    name = "decoder_nll.json" if _SPLIT.value == "test" else f"decoder_nll_{_SPLIT.value}.json"
    writers.write_json(os.path.join(workdir, name), result)
    print(json.dumps(result))


def evaluate(workdir, num_examples, num_samples, seed, split="test"):
  """Mean NLLs of one run on a split under its encoder and under the Laplace proposal."""
  data = runs.load_data(runs.read_config(workdir))
  run = runs.load_run(workdir, data=data)
  if run.method.laplace_log_likelihood is None:
    raise ConfigError(f"{workdir}: method {run.method.name!r} has no Laplace estimate (the VAE "
                      "and Stein VAE families have one)")
  own = jax.jit(run.method.log_likelihood, static_argnums=3)
  laplace = jax.jit(run.method.laplace_log_likelihood, static_argnums=3)
  key, sums, count, start = jax.random.PRNGKey(seed), {"own": 0.0, "laplace": 0.0}, 0, time.time()
  batch_size = run.config.eval.batch_size
  for i, batch in enumerate(pipeline.eval_batches(data, split, batch_size)):
    mask = batch.pop("mask") & (np.arange(batch_size) + count < num_examples)
    batch_key = jax.random.fold_in(key, i)
    for name, fn in (("own", own), ("laplace", laplace)):
      sums[name] += float(np.sum(np.asarray(fn(run.state.params, batch, batch_key,
                                                num_samples))[mask]))
    count += int(mask.sum())
    if count >= num_examples:
      break
  return {"workdir": workdir, "method": run.method.name, "steps": int(run.state.step),
          "split": split, "num_examples_evaluated": count, "nll_num_samples": num_samples,
          "nll_nats": -sums["own"] / count, "nll_laplace_nats": -sums["laplace"] / count,
          "wall_s": time.time() - start}


if __name__ == "__main__":
  app.run(main)
