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
when both are high, the decoder itself assigns the data low likelihood.
``nll_standard_error_nats`` is the standard error of ``nll_nats`` over the images.

``posterior_shape`` (on the first ``--shape_examples`` images, ``--shape_samples``
draws of q each; medians over the images): q(z | x) against the Laplace
approximation of p(z | x) in the coordinates that whiten its precision H
(``dgm_jax.eval.posterior_shape``): the smallest, median and largest variance of
q there (1 where they agree), q's mean offset, the Gaussian KL between the two,
log det H, which grows as the decoder's posteriors sharpen, and ``entropy_deficit``,
how much less entropy q has than a Gaussian of its own moments (0 for the VAE). Writes
``decoder_nll.json`` (``decoder_nll_train.json``, ``decoder_nll_valid.json`` for
the other splits) into each workdir and prints one JSON line per run. The per-image NLLs
behind the means are saved beside it, ``decoder_nll_per_image.npz`` (arrays ``own`` and
``laplace``, in the split's order), so a run trained later can be paired with these
(``eval.nll.paired_difference``) without scoring them again: the same ``--seed``,
``--num_samples`` and split give every run the same images, and the same importance-
sampling keys where the runs' ``eval.batch_size`` agree too (keys are folded per batch;
with different batch sizes the pairing holds, its draws are only independent).

Paired comparison. With several workdirs every run sees the same images (and the same
importance-sampling keys where their ``eval.batch_size`` agree), so each run after the
first also gets ``paired_with_first``: the mean per-image difference of its NLLs from
the first run's (``nll_difference_nats``, negative where it is better;
``nll_laplace_difference_nats`` for the Laplace NLLs) and its standard error
(``eval.nll.paired_difference``). Per-image differences cancel the images' shared
difficulty, so their standard error is far below that of a difference of two means,
``sqrt(se_a^2 + se_b^2)`` from each run's ``nll_standard_error_nats``. The runs must be
scored on the same observations (the split's first images, seen by the same likelihood:
binarized by the same ``eval.binarization_seed`` for Bernoulli decoders, 8-bit for
discretized ones; ``train.runs.check_same_images``); otherwise the call stops with one
error line before any evaluation.

  python -m experiments.decoder_nll --workdir=runs/vae --workdir=runs/stein_vae
"""

import json
import os
import time

import jax
import numpy as np
from absl import flags

from dgm_jax.data import pipeline
from dgm_jax.eval import nll
from dgm_jax.train import launch, runs, writers
from dgm_jax.train.guards import ConfigError

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "Workdir of a run (repeat).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 1000, "First images of the split to evaluate.",
                                     lower_bound=1)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "valid", "test"],
                           "Split to evaluate ('train' against 'test' shows overfitting).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Importance samples K per image.",
                                    lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Key of the importance samples.")
_SHAPE_EXAMPLES = flags.DEFINE_integer(
    "shape_examples", 30, "First images of the split whose q is compared with the Laplace "
    "approximation (0: skip).", lower_bound=0)
_SHAPE_SAMPLES = flags.DEFINE_integer("shape_samples", 1000,
                                      "Draws of q per image for its mean and covariance.",
                                      lower_bound=1)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  workdirs, reference = _WORKDIRS.value, None
  try:
    if len(workdirs) > 1 and _NUM_EXAMPLES.value < 2:
      raise ConfigError(f"--num_examples={_NUM_EXAMPLES.value}: a paired comparison of several "
                        "workdirs needs at least 2 images for its standard error")
    configs = [runs.read_config(w) for w in workdirs]
    datasets = [runs.load_data(c) for c in configs]
    runs.check_same_images([runs.images_evaluated(c, d, _SPLIT.value, _NUM_EXAMPLES.value)
                            for c, d in zip(configs, datasets)], workdirs)
  except launch.KNOWN_ERRORS as error:
    launch.fail(f"{type(error).__name__}: {error}")
  for workdir, data in zip(workdirs, datasets):
    try:
      result, per_image = evaluate(workdir, _NUM_EXAMPLES.value, _NUM_SAMPLES.value, _SEED.value,
                                   _SPLIT.value, _SHAPE_EXAMPLES.value, _SHAPE_SAMPLES.value,
                                   data=data)
    except launch.KNOWN_ERRORS as error:
      launch.fail(f"{type(error).__name__}: {error}")
    if reference is None:
      reference = (workdir, per_image)
    else:
      result["paired_with_first"] = paired_with(reference, per_image)
    name = "decoder_nll" if _SPLIT.value == "test" else f"decoder_nll_{_SPLIT.value}"
    writers.write_npz(os.path.join(workdir, name + "_per_image.npz"), per_image)
    writers.write_json(os.path.join(workdir, name + ".json"), result)
    print(json.dumps(result))


def paired_with(reference, per_image):
  """``paired_with_first``: this run's per-image NLLs against the first run's."""
  workdir, reference_nll = reference
  own = nll.paired_difference(per_image["own"], reference_nll["own"])
  laplace = nll.paired_difference(per_image["laplace"], reference_nll["laplace"])
  return {"workdir": workdir, **own,
          "nll_laplace_difference_nats": laplace["nll_difference_nats"],
          "laplace_standard_error_nats": laplace["standard_error_nats"]}


def evaluate(workdir, num_examples, num_samples, seed, split="test", shape_examples=0,
             shape_samples=1000, data=None):
  """Mean NLLs of one run on a split under its encoder and under the Laplace proposal,
  and the median ``posterior_shape`` metrics of its first ``shape_examples`` images.

  Returns:
    (result dict, per-image NLLs ``{"own": [N], "laplace": [N]}`` in the split's order).
  """
  if data is None:
    data = runs.load_data(runs.read_config(workdir))
  run = runs.load_run(workdir, data=data)
  if run.method.laplace_log_likelihood is None:
    raise ConfigError(f"{workdir}: method {run.method.name!r} has no Laplace estimate (the VAE "
                      "and Stein VAE families have one)")
  if shape_examples > 0:
    if run.method.posterior_shape is None:
      raise ConfigError(f"{workdir}: method {run.method.name!r} has no posterior_shape; use "
                        "--shape_examples=0")
    if shape_samples <= run.config[run.config.method].latent_dim:
      raise ConfigError(f"--shape_samples={shape_samples} must exceed the latent dimension "
                        "(q's covariance is estimated from them)")
  own = jax.jit(run.method.log_likelihood, static_argnums=3)
  laplace = jax.jit(run.method.laplace_log_likelihood, static_argnums=3)
  key, count, start = jax.random.PRNGKey(seed), 0, time.time()
  log_likelihoods = {"own": [], "laplace": []}
  batch_size = run.config.eval.batch_size
  for i, batch in enumerate(pipeline.eval_batches(data, split, batch_size)):
    mask = batch.pop("mask") & (np.arange(batch_size) + count < num_examples)
    batch_key = jax.random.fold_in(key, i)
    for name, fn in (("own", own), ("laplace", laplace)):
      log_likelihoods[name].append(
          np.asarray(fn(run.state.params, batch, batch_key, num_samples))[mask])
    count += int(mask.sum())
    if count >= num_examples:
      break
  per_image = {name: -np.concatenate(v).astype(np.float64) for name, v in log_likelihoods.items()}
  result = {"workdir": workdir, "method": run.method.name, "data_source": data.source,
            "steps": int(run.state.step),
            "split": split, "num_examples_evaluated": count, "nll_num_samples": num_samples,
            "nll_nats": float(np.mean(per_image["own"])),
            "nll_laplace_nats": float(np.mean(per_image["laplace"])),
            "nll_standard_error_nats": nll.standard_error(per_image["own"])}
  if shape_examples > 0:
    result["posterior_shape"] = shape_medians(run, data, split, shape_examples, shape_samples,
                                              jax.random.fold_in(key, 1_000_003))
  return {**result, "wall_s": time.time() - start}, per_image


def shape_medians(run, data, split, num_examples, num_samples, key):
  """Medians over the first ``num_examples`` images of ``method.posterior_shape``."""
  shape_fn = jax.jit(run.method.posterior_shape, static_argnums=3)
  rows = min(run.config.eval.batch_size, num_examples)  # no work on rows past num_examples
  per_example, count = [], 0
  for i, batch in enumerate(pipeline.eval_batches(data, split, run.config.eval.batch_size)):
    batch = {k: v[:rows] for k, v in batch.items()}
    mask = np.asarray(batch.pop("mask"))
    metrics = shape_fn(run.state.params, batch, jax.random.fold_in(key, i), num_samples)
    per_example.append({k: np.asarray(v)[mask] for k, v in metrics.items()})
    count += int(mask.sum())
    if count >= num_examples:
      break
  return {k: float(np.median(np.concatenate([m[k] for m in per_example])[:num_examples]))
          for k in per_example[0]}


if __name__ == "__main__":
  launch.run_main(main)
