"""Where the file-based loaders look for data (MNIST, Fashion-MNIST, CIFAR-10).

The search order is the same for every dataset read from files (chapters 4-5):
the ``data_dir`` the config names, its dataset sub-folder, then
``$DGM_JAX_DATA_DIR/<sub-folder>``, then fixed system folders such as the one
Debian's ``dataset-fashion-mnist`` package installs.
"""

import os

from dgm_jax.data.registry import DataError

__all__ = ["search_dirs", "DATA_DIR_ENV"]

DATA_DIR_ENV = "DGM_JAX_DATA_DIR"


def search_dirs(data_dir, subdirs, system_dirs=()):
  """Existing candidate folders, in the order they should be searched.

  Args:
    data_dir: the folder the caller named, or None.
    subdirs: names of the dataset's sub-folder, e.g. ``('mnist',)``.
    system_dirs: absolute folders searched last.

  Returns:
    A list of existing folders without repeats: ``data_dir``,
    ``data_dir/<sub>``, ``$DGM_JAX_DATA_DIR/<sub>``, then ``system_dirs``.

  Raises:
    DataError: ``data_dir`` was given but is not a folder (a typo there should
      not silently fall back to another source).
  """
  candidates = []
  if data_dir is not None:
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
      raise DataError(f"data_dir {data_dir!r} is not a folder; fix data.data_dir or leave it unset")
    candidates += [data_dir] + [os.path.join(data_dir, sub) for sub in subdirs]
  env_dir = os.environ.get(DATA_DIR_ENV)
  if env_dir:
    candidates += [os.path.join(env_dir, sub) for sub in subdirs]
  candidates += list(system_dirs)
  found = []
  for folder in candidates:
    if os.path.isdir(folder) and folder not in found:
      found.append(folder)
  return found
