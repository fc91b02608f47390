"""The one generic training loop shared by every method (DESIGN sections 3-4).

``dgm_jax.train.run`` is the loop (``dgm_jax.train.loop.run``). It is imported on first use,
so that a model module's ``from dgm_jax.train.state import TrainState`` does not pull in
the loop and its dependencies (orbax, the writers, the sample classifier).
"""

import importlib

__all__ = ["run"]


def __getattr__(name):
  if name == "run":
    return importlib.import_module("dgm_jax.train.loop").run
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
