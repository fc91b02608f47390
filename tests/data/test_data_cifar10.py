"""CIFAR-10 pickle batches: layout, split, and errors (tiny fake batches)."""

import pickle

import numpy as np
import pytest

from dgm_jax import data
from dgm_jax.data import cifar10, paths, tfds


@pytest.fixture
def tiny_cifar(monkeypatch, tmp_path):
  """Six batches of 3 images; image i of batch b: red (0, 1) = 10 b + i, blue (2, 0) = 255."""
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(tfds, "load_splits", lambda *args, **kwargs: None)
  monkeypatch.setattr(cifar10, "_NUM_TRAIN", 12)
  monkeypatch.setattr(cifar10, "_NUM_VALID", 3)
  monkeypatch.setattr(cifar10, "_NUM_TEST", 3)
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
    pixels = np.zeros((3, 3, 32, 32), np.uint8)
    pixels[:, 0, 0, 1] = 10 * b + np.arange(3)
    pixels[:, 2, 2, 0] = 255
    with open(folder / name, "wb") as f:
      pickle.dump({b"data": pixels.reshape(3, 3072), b"labels": [b, b, b]}, f)
  return tmp_path


class TestCifar10:

  def test_layout_and_split(self, tiny_cifar):
    dataset = data.load("cifar10", tiny_cifar)
    assert dataset.source == f"pickle:{tiny_cifar}/cifar-10-batches-py"
    assert dataset.num_examples == {"train": 12, "valid": 3, "test": 3}
    assert dataset.shape == (32, 32, 3) and dataset.kind == "color8"
    train = dataset.splits["train"]
    np.testing.assert_array_equal(train[:, 0, 1, 0] * 255,
                                  [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32])
    np.testing.assert_array_equal(train[:, 2, 0, 2], 1.0)
    assert train.sum() * 255 == pytest.approx(train[:, 0, 1, 0].sum() * 255 + 12 * 255)
    np.testing.assert_array_equal(dataset.splits["valid"][:, 0, 1, 0] * 255, [40, 41, 42])
    np.testing.assert_array_equal(dataset.labels["valid"], [4, 4, 4])
    np.testing.assert_array_equal(dataset.labels["test"], [5, 5, 5])

  def test_missing_batch_is_named(self, tiny_cifar):
    (tiny_cifar / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="data_batch_3 is missing"):
      data.load("cifar10", tiny_cifar)

  def test_no_source_says_where_to_get_it(self, tmp_path, monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tfds, "load_splits", lambda *args, **kwargs: None)
    with pytest.raises(data.DataError, match="cifar-10-python.tar.gz"):
      data.load("cifar10", tmp_path)
