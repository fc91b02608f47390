"""TensorFlow Datasets as a second source of MNIST, Fashion-MNIST and CIFAR-10.

Used by the image loaders of chapters 4-5 when no raw files are found. It only
reads data that ``tfds`` has already prepared (``download=False``): this
project never downloads inside a run or a test. ``tfds.load`` needs TensorFlow;
without it, or without prepared data, ``load_splits`` returns None and the
caller moves on to its next source.
"""

from absl import logging

__all__ = ["load_splits"]


def load_splits(tfds_name, split_specs, data_dir=None):
  """Reads prepared TFDS image splits into numpy arrays.

  Args:
    tfds_name: TFDS builder name, e.g. 'mnist'.
    split_specs: our split name -> TFDS split string, e.g.
      ``{'train': 'train[:50000]', 'valid': 'train[50000:]', 'test': 'test'}``.
    data_dir: a TFDS data folder to try before TFDS's default one.

  Returns:
    ``(images, labels, source)``: dicts of uint8 ``[N, H, W, C]`` and int
    ``[N]`` arrays keyed like ``split_specs``, and a source string such as
    'tfds:mnist'; or None when TensorFlow or the prepared data is missing.
  """
  try:
    import tensorflow  # noqa: F401  (tfds.load needs it)
    import tensorflow_datasets
  except ImportError:
    return None
  for folder in dict.fromkeys([data_dir, None]):
    try:
      images, labels = {}, {}
      for split, spec in split_specs.items():
        arrays = tensorflow_datasets.as_numpy(tensorflow_datasets.load(
            tfds_name, split=spec, batch_size=-1, download=False, data_dir=folder))
        images[split], labels[split] = arrays["image"], arrays["label"]
    except Exception as e:  # tfds raises many types for "not prepared here".
      logging.info("TFDS has no prepared %s in %s: %s", tfds_name,
                   folder or "its default folder", e)
      continue
    return images, labels, f"tfds:{tfds_name}" + (f" ({folder})" if folder else "")
  return None
