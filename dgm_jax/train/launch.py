"""What every absl launcher in ``experiments/`` shares: flags -> config -> run (DESIGN
sections 3 and 7).

Known failures (a bad config value, missing or damaged data, a batch that does
not split, a non-finite loss) end the process with one line on stderr and
exit status 1 instead of a traceback.
"""

import ast
import os
import sys

from absl import app, flags, logging

from dgm_jax.data import registry
from dgm_jax.data.registry import DataError
from dgm_jax.train import config_check, loop, writers
from dgm_jax.train.guards import ConfigError, NonFiniteLossError, first_non_finite
from dgm_jax.train.parallel import BatchSplitError

__all__ = ["run_app", "run_main", "main", "start_toy", "write_toy_history", "fail",
           "KNOWN_ERRORS"]

KNOWN_ERRORS = (ConfigError, DataError, BatchSplitError, NonFiniteLossError)


def run_app(method_name, config_flag, workdir_flag):
  """``app.run`` for a launcher; a bad ``--config.a.b=value`` is one error line.

  ml_collections applies ``--config.*`` overrides while absl parses flags and
  raises a bare AttributeError/KeyError for a key the config does not have;
  that is turned into a message naming the override.
  """
  def _main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]}; options are --config, --workdir, --config.<key>=<value>")
    main(method_name, config_flag.value, workdir_flag.value)

  run_main(_main)


def run_main(main_fn):
  """``app.run(main_fn)``, with a bad ``--config.a.b=value`` override as one error line.

  For launchers with their own ``main`` (the posterior toys ``experiments.gmm``
  and ``experiments.pfa``); errors raised once ``main_fn`` runs propagate.
  """
  started = []

  def _main(argv):
    _load_config_flag()
    started.append(True)
    return main_fn(argv)

  try:
    app.run(_main, flags_parser=_parse_flags)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    if started:
      raise
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    fail(f"could not apply the config overrides {overrides}: {type(error).__name__}: "
         f"{_one_line(error)}. An override must name an existing key of the config file "
         "(see configs/) with a value of the key's type.")


def _one_line(error):
  """An exception's message on one line, without the quoting ``KeyError`` adds (ml_collections'
  unknown-key errors carry a quoted key and a "Did you mean" line)."""
  message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
  for _ in range(2):  # a repr of a KeyError's repr: unquote it (twice at most)
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      try:
        message = ast.literal_eval(message)
      except (SyntaxError, ValueError):
        break
  return " ".join(message.split())


def start_toy(config, argv, workdir, dataset, usage):
  """The posterior toys' start: checks the arguments, makes the workdir, loads the data.

  Args:
    config: the ``--config`` value.
    argv: absl's leftover arguments (only the program name is allowed).
    workdir: the ``--workdir`` value, or None for a new folder under ./runs.
    dataset: 'gmm' or 'pfa'; ``config.data.name`` must be it.
    usage: the ``--config=...`` form to show in the error line.

  Returns:
    (workdir, data), with ``config.json`` written there. A bad argument or data
    set ends the process with one ``error:`` line.
  """
  if len(argv) > 1 or config is None:
    fail(f"pass {usage} and no other arguments; got {argv[1:]}")
  if config.data.name != dataset:
    fail(f"ConfigError: data.name={config.data.name!r}: experiments.{dataset} runs the "
         f"{dataset!r} toy only ({usage})")
  try:
    config_check.validate_toy(config, ("stein_vae", "vae", "gibbs"))
  except ConfigError as error:
    fail(f"ConfigError: {error}")
  workdir = workdir or loop.default_workdir(f"{dataset}_toy", dataset)
  try:
    loop.make_workdir(workdir)
  except ConfigError as error:
    fail(f"ConfigError: {error}")
  try:
    data = registry.load(dataset, seed=config.seed, **dict(config.data.options))
  except DataError as error:
    fail(f"DataError: {error}")
  writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  return workdir, data


def write_toy_history(workdir, records):
  """A posterior toy's ``metrics.jsonl`` from ``(step, row)`` records, written anew (a toy
  keeps no checkpoints, so a re-run starts over); a non-finite value is one error line."""
  bad = first_non_finite(records)
  if bad is not None:
    step, name, value = bad
    fail(f"NonFiniteLossError: non-finite {name}={value} at step {step}; the toy keeps no "
          "checkpoints and wrote no results. Lower the learning rate.")
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    os.remove(path)
  writer = writers.MetricWriter(workdir, tensorboard=False)
  for step, row in records:
    writer.write(step, "train", row)


def main(method_name, config, workdir):
  """Runs one experiment; prints one error line and exits 1 on a known failure."""
  logging.get_absl_handler().addFilter(_quiet_checkpoint_library)
  if config is None:
    fail("no config given: pass --config=configs/<dataset>.py (e.g. configs/mnist.py)")
  with config.unlocked():
    config.method = method_name
  try:
    return loop.run(config, workdir, method_name)
  except KNOWN_ERRORS as error:
    fail(f"{type(error).__name__}: {error}")


def _parse_flags(argv):
  """absl's flag parsing, with a flag it cannot parse as one error line: a value of the
  wrong type (``--config.train.num_steps=abc``) or a config file that raises
  (``configs/mnist.py:bogus``, whose message ends a traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    fail(message)


def _load_config_flag():
  """Loads ``--config`` now (ml_collections loads the file lazily): a file that does not
  exist is one error line."""
  if "config" not in flags.FLAGS:
    return
  value = flags.FLAGS["config"].value  # a placeholder that raises on use if loading failed
  try:
    if value is not None:
      value.keys()
  except OSError as error:
    fail(f"could not load --config: {' '.join(str(error).split())}")


def fail(message):
  """Prints ``error: <message>`` and ends the process at once with status 1 (``os._exit``):
  a failed orbax restore leaves coroutines whose tracebacks Python would print at a
  normal shutdown. Every launcher's known failures end here."""
  logging.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


def _quiet_checkpoint_library(record):
  """Keeps orbax's per-save INFO chatter out of the run log (warnings still show)."""
  return record.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in record.pathname
