"""CIFAR-10 for the natural-image experiments of chapter 5, split 45K / 5K / 10K.

Sources, first found wins: the standard "python version" pickle batches
(``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``) in the folders of
``paths.search_dirs``; then prepared TensorFlow Datasets. The last 5,000 training
images are the validation split. Pixels are scaled to [0, 1]; the uniform
dequantization of section 5.3.1 is a transform.
"""

import os
import pickle

import numpy as np

from dgm_jax.data import paths, tfds
from dgm_jax.data.registry import DataError, Dataset

__all__ = ["load_cifar10", "BATCHES_DIR"]

BATCHES_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_NUM_TRAIN, _NUM_VALID, _NUM_TEST = 45_000, 5_000, 10_000
_TFDS_SPLITS = {"train": f"train[:{_NUM_TRAIN}]", "valid": f"train[{_NUM_TRAIN}:]", "test": "test"}


def load_cifar10(data_dir=None, *, seed=0):
  """CIFAR-10, 45,000 / 5,000 / 10,000.

  Args:
    data_dir: a ``cifar-10-batches-py`` folder, or a folder holding one
      directly or under ``cifar10/``; ``$DGM_JAX_DATA_DIR`` is searched the
      same way.
    seed: unused (the split is fixed); accepted like every loader.

  Returns:
    ``Dataset`` 'cifar10': float32 ``[N, 32, 32, 3]`` in [0, 1], int32 labels,
    kind 'color8'.

  Raises:
    DataError: no source found, or incomplete or malformed batch files.
  """
  del seed
  folders = paths.search_dirs(data_dir, (BATCHES_DIR, os.path.join("cifar10", BATCHES_DIR)))
  for folder in folders:
    if any(os.path.isfile(os.path.join(folder, n)) for n in _TRAIN_BATCHES + ("test_batch",)):
      splits, labels = _read_batches(folder)
      return Dataset(name="cifar10", splits=splits, labels=labels, kind="color8",
                     source=f"pickle:{folder}")
  from_tfds = tfds.load_splits("cifar10", _TFDS_SPLITS, data_dir)
  if from_tfds is None:
    raise DataError(f"CIFAR-10 not found (looked in: {', '.join(folders) or 'no existing folder'}; "
                    "TFDS has none prepared); download and unpack cifar-10-python.tar.gz from "
                    "https://www.cs.toronto.edu/~kriz/cifar.html and point data.data_dir (or "
                    f"${paths.DATA_DIR_ENV}) at the folder holding {BATCHES_DIR}/")
  images, labels, source = from_tfds
  return Dataset(name="cifar10", splits={s: _to_unit(images[s]) for s in images},
                 labels={s: labels[s].astype(np.int32) for s in labels}, kind="color8",
                 source=source)


def _read_batches(folder):
  images, labels = zip(*(_read_batch(folder, n) for n in _TRAIN_BATCHES + ("test_batch",)))
  train_images, train_labels = np.concatenate(images[:-1]), np.concatenate(labels[:-1])
  if len(train_images) != _NUM_TRAIN + _NUM_VALID or len(images[-1]) != _NUM_TEST:
    raise DataError(f"{folder}: expected {_NUM_TRAIN + _NUM_VALID} training and {_NUM_TEST} test "
                    f"images, found {len(train_images)} and {len(images[-1])}; "
                    "re-download CIFAR-10")
  return ({"train": _to_unit(train_images[:_NUM_TRAIN]),
           "valid": _to_unit(train_images[_NUM_TRAIN:]), "test": _to_unit(images[-1])},
          {"train": train_labels[:_NUM_TRAIN], "valid": train_labels[_NUM_TRAIN:],
           "test": labels[-1]})


def _read_batch(folder, name):
  """One pickle batch -> (uint8 [N, 32, 32, 3], int32 [N])."""
  path = os.path.join(folder, name)
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    pixels = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int32)
  except FileNotFoundError as e:
    raise DataError(f"{path} is missing; re-download and unpack CIFAR-10") from e
  except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
    raise DataError(f"{path} is not a readable CIFAR-10 batch ({e!r}); re-download it") from e
  if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or labels.shape != pixels.shape[:1]:
    raise DataError(f"{path}: expected [N, 3072] pixels and [N] labels, "
                    f"found {pixels.shape} and {labels.shape}")
  # Rows are channel-major (1024 red, then green, then blue values): -> [N, H, W, C].
  return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _to_unit(images):
  return images.astype(np.float32) / np.float32(255.0)
