"""Registry: names, options, the Dataset contract, and the small bundled digits."""

import importlib.util

import numpy as np
import pytest

from dgm_jax import data
from dgm_jax.data import registry


def _tiny_dataset(**overrides):
  fields = dict(
      name="tiny",
      splits={s: np.full((3, 2, 2, 1), 0.5, np.float32) for s in registry.SPLITS},
      labels={s: np.zeros(3, np.int32) for s in registry.SPLITS},
      kind="grayscale8", source="test")
  fields.update(overrides)
  return registry.Dataset(**fields)


class TestLoad:

  def test_available_names(self):
    assert data.available() == ["cifar10", "digits", "fashion_mnist", "gmm", "mnist", "pfa",
                                "synthetic_color32"]

  def test_unknown_name_lists_available_names_on_one_line(self):
    with pytest.raises(data.DataError) as info:
      data.load("mnits")
    message = str(info.value)
    assert "mnits" in message and "\n" not in message
    for name in data.available():
      assert name in message
    assert isinstance(info.value, ValueError)

  def test_unknown_option_names_it_and_the_accepted_ones(self):
    with pytest.raises(data.DataError, match=r"colour.*setting.*num_train"):
      data.load("gmm", colour="red")

  def test_missing_data_dir_is_an_error_not_a_fallback(self, tmp_path):
    with pytest.raises(data.DataError, match="not a folder"):
      data.load("mnist", tmp_path / "typo")


class TestDataset:

  def test_derived_fields_and_read_only_arrays(self):
    dataset = _tiny_dataset()
    assert dataset.num_examples == {"train": 3, "valid": 3, "test": 3}
    assert dataset.shape == (2, 2, 1)
    assert dataset.num_levels == 256
    with pytest.raises(ValueError):
      dataset.splits["train"][0, 0, 0, 0] = 1.0

  @pytest.mark.parametrize("bad, match", [
      (dict(kind="sepia"), "unknown kind"),
      (dict(splits={s: np.full((3, 2, 2, 1), 1.5, np.float32) for s in registry.SPLITS}),
       r"\[0, 1\]"),
      (dict(splits={s: np.full((3, 2, 2, 1), 0.5) for s in registry.SPLITS}), "float32"),
      (dict(labels={s: np.zeros(2, np.int32) for s in registry.SPLITS}), "labels"),
      (dict(labels={"train": None}), "splits"),
  ])
  def test_inconsistent_contents_are_rejected(self, bad, match):
    with pytest.raises(data.DataError, match=match):
      _tiny_dataset(**bad)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="scikit-learn not installed")
class TestDigits:

  def test_sizes_range_and_levels(self):
    dataset = data.load("digits", seed=3)
    assert dataset.num_examples == {"train": 1297, "valid": 250, "test": 250}
    assert dataset.shape == (8, 8, 1) and dataset.source == "sklearn digits"
    everything = np.concatenate([dataset.splits[s] for s in registry.SPLITS])
    assert everything.min() == 0.0 and everything.max() == 1.0
    np.testing.assert_array_equal(everything * 16, np.round(everything * 16))
    labels = np.concatenate([dataset.labels[s] for s in registry.SPLITS])
    assert np.bincount(labels).min() > 170  # every class present; the split is a permutation.

  def test_split_depends_on_seed(self):
    first, again, other = (data.load("digits", seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.splits["test"], again.splits["test"])
    assert not np.array_equal(first.splits["test"], other.splits["test"])
