"""Dataset names -> arrays and metadata, for every experiment of chapters 3-5.

``load(name)`` returns a :class:`Dataset` with fixed 'train' / 'valid' / 'test'
splits: MNIST with the 50K / 10K / 10K split of section 4.5.2, Fashion-MNIST the
same way, CIFAR-10 (chapter 5), the small scikit-learn digits for quick runs, and
the synthetic Gaussian-mixture and Poisson factor analysis toys of section 4.5.1,
and synthetic labelled 32x32 colour images for CIFAR-10 smoke runs.
Images are float32 in [0, 1]; binarization and dequantization are transforms
(``dgm_jax.data.transforms``), not part of loading. Every dataset records which
source was actually read, so results can say what they were trained on.
Loaders are imported on first use, so ``available()`` imports nothing heavy.
"""

import dataclasses
import importlib
import inspect

import numpy as np

__all__ = ["load", "available", "Dataset", "DataError", "KINDS", "SPLITS"]

SPLITS = ("train", "valid", "test")

# kind -> number of pixel levels of the stored values (None: not a pixel lattice).
KINDS = {
    "grayscale8": 256,   # 8-bit images, stored as k / 255.
    "color8": 256,       # 8-bit RGB images, stored as k / 255.
    "grayscale17": 17,   # scikit-learn digits, levels 0..16 stored as k / 16.
    "continuous": None,  # real vectors (the Gaussian-mixture toy).
    "counts": None,      # non-negative integer counts stored as float32 (Poisson toy).
}

_LOADERS = {
    "mnist": ("dgm_jax.data.mnist", "load_mnist"),
    "fashion_mnist": ("dgm_jax.data.mnist", "load_fashion_mnist"),
    "cifar10": ("dgm_jax.data.cifar10", "load_cifar10"),
    "digits": ("dgm_jax.data.bundled", "load_digits"),
    "gmm": ("dgm_jax.data.synthetic", "load_gmm"),
    "pfa": ("dgm_jax.data.synthetic", "load_pfa"),
    "synthetic_color32": ("dgm_jax.data.synthetic", "load_synthetic_color32"),
}


class DataError(ValueError):
  """A dataset could not be loaded; the message names the thing and the fix."""


def load(name, data_dir=None, *, seed=0, **options):
  """Loads a dataset by name.

  Args:
    name: one of ``available()``.
    data_dir: folder to look in first for data files (the config's
      ``data.data_dir``); ``None`` searches ``$DGM_JAX_DATA_DIR`` and the
      system locations each loader documents. Synthetic datasets ignore it.
    seed: draws the synthetic datasets and the splits of bundled subsets.
    **options: dataset-specific keyword options (e.g. ``setting='bimodal'``
      for ``gmm``); an unknown option raises ``DataError``.

  Returns:
    A ``Dataset`` with splits 'train', 'valid' and 'test'.

  Raises:
    DataError: unknown name or option, or no usable source of the data.
  """
  if name not in _LOADERS:
    raise DataError(f"unknown dataset {name!r}; available datasets: {', '.join(available())}")
  module_name, function_name = _LOADERS[name]
  loader = getattr(importlib.import_module(module_name), function_name)
  accepted = [p.name for p in inspect.signature(loader).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise DataError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                    f"its options are: {', '.join(accepted) or 'none'}")
  return loader(data_dir, seed=seed, **options)


def available():
  """Names accepted by ``load``, sorted."""
  return sorted(_LOADERS)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Arrays of one dataset and what they are.

  ``num_examples`` and ``shape`` are derived from ``splits``; construction
  checks that splits, labels, dtypes and value ranges agree and makes the
  arrays read-only.

  Attributes:
    name: registry name, e.g. 'mnist'.
    splits: 'train', 'valid', 'test' -> float32 ``[N, *shape]`` (images
      ``[N, H, W, C]`` in [0, 1]; vectors ``[N, D]``).
    labels: same keys -> int32 ``[N]``, or ``None`` for unlabeled data.
    kind: a key of ``KINDS``.
    source: human-readable account of what was read, e.g. 'idx:/data/mnist'.
    extras: dataset-specific metadata (true parameters of synthetic data).
    num_examples: split -> number of examples.
    shape: per-example shape, e.g. ``(28, 28, 1)``.
  """

  name: str
  splits: dict = dataclasses.field(repr=False)
  labels: dict = dataclasses.field(repr=False)
  kind: str
  source: str
  extras: dict = dataclasses.field(default_factory=dict, repr=False)
  num_examples: dict = dataclasses.field(init=False)
  shape: tuple = dataclasses.field(init=False)

  def __post_init__(self):
    if set(self.splits) != set(SPLITS) or set(self.labels) != set(SPLITS):
      raise DataError(f"dataset {self.name!r} must have splits {SPLITS}, "
                      f"got {sorted(self.splits)} and labels {sorted(self.labels)}")
    if self.kind not in KINDS:
      raise DataError(f"dataset {self.name!r} has unknown kind {self.kind!r}; "
                      f"kinds: {', '.join(KINDS)}")
    shapes = {split: x.shape[1:] for split, x in self.splits.items()}
    if len(set(shapes.values())) != 1:
      raise DataError(f"dataset {self.name!r} has splits of different example shapes: {shapes}")
    for split in SPLITS:
      _check_split(self.name, self.kind, split, self.splits[split], self.labels[split])
      self.splits[split].setflags(write=False)
      if self.labels[split] is not None:
        self.labels[split].setflags(write=False)
    object.__setattr__(self, "num_examples", {s: int(self.splits[s].shape[0]) for s in SPLITS})
    object.__setattr__(self, "shape", tuple(shapes["train"]))

  @property
  def num_levels(self):
    """Number of pixel levels (256 for 8-bit images), or None for non-images."""
    return KINDS[self.kind]


def _check_split(name, kind, split, x, labels):
  where = f"dataset {name!r} split {split!r}"
  if not isinstance(x, np.ndarray) or x.dtype != np.float32:
    raise DataError(f"{where}: examples must be a float32 numpy array, got {type(x).__name__} "
                    f"{getattr(x, 'dtype', '')}")
  if labels is not None:
    if labels.dtype != np.int32 or labels.shape != x.shape[:1]:
      raise DataError(f"{where}: labels must be int32 of shape {x.shape[:1]}, "
                      f"got {labels.dtype} {labels.shape}")
  if x.size == 0:
    return
  low, high = float(x.min()), float(x.max())
  if not np.isfinite(low + high):
    raise DataError(f"{where}: examples contain non-finite values")
  if KINDS[kind] is not None and (low < 0.0 or high > 1.0):
    raise DataError(f"{where}: {kind} pixels must lie in [0, 1], found [{low}, {high}]")
  if kind == "counts" and (low < 0.0 or not np.all(x == np.round(x))):
    raise DataError(f"{where}: counts must be non-negative integers")
