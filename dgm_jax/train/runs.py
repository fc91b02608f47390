"""Runs read back from their workdirs, for figures across runs such as Fig. 5.6 (section 5.3.3).

``load_run`` rebuilds what ``train.loop.run`` built from a workdir's
``config.json`` (the data set, the method) and restores its train state from
the newest orbax checkpoint through ``checkpoint.Checkpointer`` into the
replicated abstract state of ``jax.eval_shape(method.init)``, as a resumed run
does. A finished run's newest checkpoint is its final state.

``check_same_images`` guards comparisons of several runs image by image
(``experiments.decoder_nll``'s paired differences).
"""

import hashlib
import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from dgm_jax import models
from dgm_jax.data import paths, registry
from dgm_jax.models.base import DataSpec
from dgm_jax.train import checkpoint, parallel, writers
from dgm_jax.train.guards import ConfigError

__all__ = ["Run", "load_run", "read_config", "read_json", "load_data", "data_spec",
           "abstract_state", "images_evaluated", "check_same_images", "check_trained_data",
           "DATA_RECORD", "data_record", "check_resumed_data"]


class Run(NamedTuple):
  """A run restored from its workdir.

  Attributes:
    workdir: the folder it was read from.
    config: its resolved config (``config.json``).
    method: the ``Method`` bundle rebuilt from the config and the data's spec.
    state: the ``TrainState`` of the newest checkpoint.
  """

  workdir: str
  config: Any
  method: Any
  state: Any


def read_config(workdir):
  """The ``ConfigDict`` a run wrote to ``<workdir>/config.json``.

  Raises:
    ConfigError: the folder holds no ``config.json``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"{workdir} holds no config.json: not the workdir of a run")
  return ml_collections.ConfigDict(read_json(path))


def read_json(path):
  """A JSON file the run wrote; a damaged one is a ConfigError naming it."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
    raise ConfigError(f"{path} cannot be read ({type(error).__name__}: {error}); it is "
                      "damaged: restore it or re-run into a new --workdir") from None


def load_data(config):
  """The ``Dataset`` a run with ``config`` trained on (``registry.load`` as the loop calls it)."""
  return registry.load(config.data.name, config.data.data_dir or None, seed=config.seed,
                       **dict(config.data.get("options", {})))


def data_spec(data):
  """The ``DataSpec`` a method is built from: shapes, kind, sizes, and the class count."""
  labels = data.labels["train"]
  return DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"],
                  num_classes=None if labels is None else int(labels.max()) + 1)


def load_run(workdir, data=None, step=None):
  """Restores the run in ``workdir``.

  Args:
    workdir: a run's output folder (``config.json`` and ``checkpoints/``).
    data: its ``Dataset``, when already loaded (e.g. shared by several runs
      of one data set); ``load_data(config)`` otherwise.
    step: the checkpoint to restore; when None, the newest, or for a run with early
      stopping the best validated state so far (``best.json``), which for a finished run
      is the state ``results.json`` describes.

  Returns:
    A ``Run``.

  Raises:
    ConfigError: no config.json or no checkpoint, a damaged config.json or
      best.json, a config the method rejects for this data, or a checkpoint that
      does not fit the config.
  """
  config = read_config(workdir)
  data = load_data(config) if data is None else data
  check_trained_data(workdir, data)
  try:
    method = models.get_method(config.method)(config, data_spec(data))
  except ValueError as error:
    raise ConfigError(f"{workdir}, section '{config.method}': {error}") from None
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ConfigError(f"{workdir} holds no checkpoints/; finish or resume the run first")
  best = os.path.join(workdir, "best.json")
  use_best = step is None and config.train.get("early_stopping", "") and os.path.exists(best)
  subdir = "best" if use_best else "checkpoints"
  if use_best:
    step = read_json(best).get("step")
    if not isinstance(step, int):
      raise ConfigError(f"{best} names no step ({step!r}); it is damaged")
  checkpointer = checkpoint.Checkpointer(workdir, subdir=subdir)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None or (use_best and step not in checkpointer.all_steps()):
      what = f" of step {step} (best.json)" if use_best else ""
      raise ConfigError(f"{workdir}/{subdir} holds no checkpoint{what}; finish or resume the "
                        "run first")
    state = checkpointer.restore(abstract_state(method, config, data), step)
  finally:
    checkpointer.close()
  return Run(workdir=workdir, config=config, method=method, state=state)


DATA_RECORD = "data.json"  # the workdir's record of the data its checkpoints were trained on


def data_record(data):
  """What a resumed or reopened run must find again: the data set, its split sizes and a
  digest of the training split (images and labels), wherever and in whatever format it is
  read."""
  digest = hashlib.blake2b(digest_size=16)
  digest.update(np.ascontiguousarray(data.splits["train"]).tobytes())
  if data.labels["train"] is not None:
    digest.update(np.ascontiguousarray(data.labels["train"]).tobytes())
  return {"dataset": data.name, "source": data.source, "num_examples": dict(data.num_examples),
          "train_digest": digest.hexdigest()}


RESUME_REMEDY = ("point --config.data.data_dir (or $DGM_JAX_DATA_DIR) at the same data, or train "
                 "into a fresh --workdir")


def check_resumed_data(data, workdir, remedy=RESUME_REMEDY):
  """Refuses to resume ``workdir`` on data other than its checkpoints were trained on (full
  MNIST then the bundled digits, say, when ``$DGM_JAX_DATA_DIR`` is unset): the run would be
  a splice of two data sets. A workdir from before ``data.json`` existed is not checked.

  Raises:
    ConfigError: naming both sources.
  """
  path = os.path.join(workdir, DATA_RECORD)
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as error:
    raise ConfigError(f"{path} cannot be read ({error}): it records the data this "
                      "workdir was trained on; train into a fresh --workdir") from None
  current = data_record(data)
  keys = ("dataset", "num_examples", "train_digest")
  if any(stored.get(key) != writers.as_json(current[key]) for key in keys):
    raise ConfigError(
        f"{workdir} was trained on {stored.get('dataset')} from {stored.get('source')} "
        f"({stored.get('num_examples')} examples), but this run reads {current['dataset']} "
        f"from {current['source']} ({current['num_examples']} examples): {remedy}")


def check_trained_data(workdir, data):
  """Refuses ``data`` when it is not what the run in ``workdir`` trained on: by
  ``data.json``'s digest of the training split (``check_resumed_data``), or for a workdir
  from before ``data.json`` existed by the split sizes its ``results.json`` records (this
  machine found another source of the data set: the 5,000 bundled digits where the run
  trained on full MNIST, or the reverse). An unfinished run without ``data.json`` is not
  checked.

  Raises:
    ConfigError: naming both sources.
  """
  if os.path.isfile(os.path.join(workdir, DATA_RECORD)):
    check_resumed_data(data, workdir, remedy=f"point data.data_dir in its config.json or "
                       f"${paths.DATA_DIR_ENV} at the data it trained on")
    return
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return
  results = read_json(path)
  trained = results.get("num_examples")
  if trained is not None and trained != dict(data.num_examples):
    raise ConfigError(
        f"{workdir} trained on {results.get('data_source', '?')} ({trained}), but the data "
        f"found now is {data.source} ({dict(data.num_examples)}): point data.data_dir in its "
        f"config.json or ${paths.DATA_DIR_ENV} at the data it trained on")


def abstract_state(method, config, data):
  """Shapes, dtypes and replicated shardings of ``method.init`` on a training batch."""
  batch_size = config.data.batch_size
  example = {"x": data.splits["train"][:batch_size]}
  if data.labels["train"] is not None:
    example["label"] = data.labels["train"][:batch_size]
  abstract = jax.eval_shape(method.init, jax.random.PRNGKey(config.seed), example)
  replicated = parallel.replicated_sharding(parallel.make_mesh())
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract)


def images_evaluated(config, data, split, num_examples):
  """What decides the observations a run is scored on: the split's first images, and how
  its likelihood sees their pixels (binarized by ``eval.binarization_seed`` for a
  Bernoulli decoder; as they are, 8-bit, for a discretized one, whatever the seed)."""
  section = config.get(config.get("method", ""), None)
  likelihood = section.get("likelihood", "bernoulli") if hasattr(section, "get") else "bernoulli"
  if likelihood == "bernoulli":
    observed = (f"pixels binarized with eval.binarization_seed="
                f"{config.eval.get('binarization_seed', None)}")
  else:
    observed = f"8-bit pixels under likelihood={likelihood!r}"
  return data.splits[split][:num_examples], observed


def check_same_images(evaluated, workdirs):
  """Stops before any evaluation when two runs would be scored on different observations.

  Args:
    evaluated: ``images_evaluated`` of each run.
    workdirs: the runs' folders, for the message.

  Raises:
    ConfigError: naming the first run whose images, or the way its likelihood sees
      their pixels, differ from the first run's.
  """
  reference, reference_observed = evaluated[0]
  for (images, observed), workdir in zip(evaluated[1:], workdirs[1:]):
    if images.shape != reference.shape or not np.array_equal(images, reference):
      raise ConfigError(f"{workdir} and {workdirs[0]} hold different images in this split: a "
                        "paired comparison needs the same ones; evaluate them in separate calls")
    if observed != reference_observed:
      raise ConfigError(f"{workdir} is scored on {observed} and {workdirs[0]} on "
                        f"{reference_observed}: a paired comparison needs the same "
                        "observations; evaluate them in separate calls")
