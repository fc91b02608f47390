"""What every absl launcher in ``experiments/`` shares: flags -> config -> run.

Known failures (a bad config value, missing or damaged data, a batch that does
not split, a non-finite loss) end the process with one line on stderr and
exit status 1 instead of a traceback.
"""

import sys

from absl import logging

from dgm_jax.data.registry import DataError
from dgm_jax.train import loop
from dgm_jax.train.guards import ConfigError, NonFiniteLossError
from dgm_jax.train.parallel import BatchSplitError

__all__ = ["main", "KNOWN_ERRORS"]

KNOWN_ERRORS = (ConfigError, DataError, BatchSplitError, NonFiniteLossError)


def main(method_name, config, workdir):
  """Runs one experiment; prints one error line and exits 1 on a known failure."""
  logging.get_absl_handler().addFilter(_quiet_checkpoint_library)
  if config is None:
    _fail("no config given: pass --config=configs/<dataset>.py (e.g. configs/mnist.py)")
  with config.unlocked():
    config.method = method_name
  try:
    return loop.run(config, workdir, method_name)
  except KNOWN_ERRORS as error:
    _fail(f"{type(error).__name__}: {error}")


def _fail(message):
  logging.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def _quiet_checkpoint_library(record):
  """Keeps orbax's per-save INFO chatter out of the run log (warnings still show)."""
  return record.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in record.pathname
