"""Stateless training batches and padded evaluation batches."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from dgm_jax import data
from dgm_jax.data import pipeline, registry

sizes = st.integers(1, 40)


def _dataset(num_examples, labeled=True):
  x = (np.arange(num_examples, dtype=np.float32)[:, None] / max(num_examples, 1)).repeat(3, 1)
  return registry.Dataset(
      name="ramp", kind="continuous", source="test",
      splits={s: x for s in registry.SPLITS},
      labels={s: (np.arange(num_examples, dtype=np.int32) if labeled else None)
              for s in registry.SPLITS})


def _straight_run(num_examples, batch_size, seed, num_steps):
  return np.concatenate([pipeline.batch_indices(num_examples, batch_size, step, seed)
                         for step in range(num_steps)])


class TestBatchIndices:

  @given(num_examples=sizes, batch_size=st.integers(1, 50), seed=st.integers(0, 5))
  def test_every_epoch_visits_each_example_once(self, num_examples, batch_size, seed):
    num_steps = -(-3 * num_examples // batch_size)
    visited = _straight_run(num_examples, batch_size, seed, num_steps)[:3 * num_examples]
    for epoch in range(3):
      one_epoch = visited[epoch * num_examples:(epoch + 1) * num_examples]
      np.testing.assert_array_equal(np.sort(one_epoch), np.arange(num_examples))
      expected = np.random.default_rng([seed, epoch]).permutation(num_examples)
      np.testing.assert_array_equal(one_epoch, expected)

  @given(num_examples=sizes, batch_size=sizes, step=st.integers(0, 200), seed=st.integers(0, 5))
  def test_deterministic_given_seed_and_step(self, num_examples, batch_size, step, seed):
    first = pipeline.batch_indices(num_examples, batch_size, step, seed)
    pipeline._epoch_permutation.cache_clear()
    again = pipeline.batch_indices(num_examples, batch_size, step, seed)
    assert first.shape == (batch_size,) and first.dtype == np.int64
    np.testing.assert_array_equal(first, again)

  @given(num_examples=sizes, batch_size=sizes, resume_step=st.integers(0, 30),
         seed=st.integers(0, 5))
  def test_resumed_run_sees_the_same_batches(self, num_examples, batch_size, resume_step, seed):
    num_steps = resume_step + 10
    straight = _straight_run(num_examples, batch_size, seed, num_steps)
    pipeline._epoch_permutation.cache_clear()  # A fresh process after the interruption.
    resumed = np.concatenate([pipeline.batch_indices(num_examples, batch_size, step, seed)
                              for step in range(resume_step, num_steps)])
    np.testing.assert_array_equal(resumed, straight[resume_step * batch_size:])

  def test_seeds_differ(self):
    assert not np.array_equal(pipeline.batch_indices(1000, 10, 0, 0),
                              pipeline.batch_indices(1000, 10, 0, 1))

  @pytest.mark.parametrize("args", [(0, 1, 0, 0), (5, 0, 0, 0), (5, 1, -1, 0)])
  def test_bad_arguments(self, args):
    with pytest.raises(data.DataError):
      pipeline.batch_indices(*args)


class TestGetBatch:

  def test_gathers_examples_and_labels(self):
    dataset = _dataset(30)
    batch = pipeline.get_batch(dataset, "train", step=7, batch_size=8, seed=2)
    indices = pipeline.batch_indices(30, 8, 7, 2)
    assert batch["x"].shape == (8, 3) and batch["x"].dtype == np.float32
    np.testing.assert_array_equal(batch["x"], dataset.splits["train"][indices])
    np.testing.assert_array_equal(batch["label"], indices)
    np.testing.assert_array_equal(batch["index"], indices)

  def test_unlabeled_batches_have_no_label(self):
    batch = pipeline.get_batch(_dataset(5, labeled=False), "valid", 0, 4, 0)
    assert set(batch) == {"x", "index"}


class TestEvalBatches:

  @given(num_examples=sizes, batch_size=st.integers(1, 45))
  def test_covers_each_example_once_with_one_shape(self, num_examples, batch_size):
    dataset = _dataset(num_examples)
    batches = list(pipeline.eval_batches(dataset, "test", batch_size))
    assert len(batches) == -(-num_examples // batch_size)
    for batch in batches:
      assert batch["x"].shape == (batch_size, 3) and batch["mask"].shape == (batch_size,)
      assert batch["mask"].dtype == bool
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == num_examples and mask[:num_examples].all()
    real = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(real, np.arange(num_examples))
    x = np.concatenate([b["x"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(x, dataset.splits["test"])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, dataset.labels["test"])
    # Padding repeats a real example, so every row is a valid input.
    padding = ~batches[-1]["mask"]
    np.testing.assert_array_equal(batches[-1]["x"][padding],
                                  dataset.splits["test"][-1:].repeat(padding.sum(), 0))
