"""Methods: each is an init function plus pure train/eval functions (chapters 4-5; chapter 3's
DGDN is not built yet).

``get_method(name)`` returns the factory ``make_method(config, spec)`` of a
method; the training loop only talks to the ``Method`` interface in ``base``.
"""

import importlib

__all__ = ["get_method", "METHODS"]

METHODS = {
    "vae": "dgm_jax.models.vae",
    "stein_vae": "dgm_jax.models.stein_vae",
    "asvae": "dgm_jax.models.asvae",
    "ali": "dgm_jax.models.asvae",
}


def get_method(name):
  """The ``make_method`` factory of a method name; unknown names list the known ones."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
  return importlib.import_module(METHODS[name]).make_method
