"""Minibatches from a ``Dataset``: stateless shuffled training batches and padded eval batches.

Training batches (size 64 in section 4.5) are a pure function of
``(seed, step)``: example position ``p = step * batch_size + i`` belongs to epoch
``p // N`` and takes entry ``p % N`` of that epoch's permutation, drawn from
``np.random.default_rng([seed, epoch])``. Every epoch visits each example once,
batches may straddle epochs, and a run resumed at step s sees exactly the batches
of an uninterrupted run, with no iterator state to checkpoint. Evaluation walks a
split in order with a fixed batch shape: the last batch is padded and masked.
"""

import functools

import numpy as np

from dgm_jax.data.registry import DataError

__all__ = ["batch_indices", "get_batch", "eval_batches", "labeled_subset", "labeled_seed"]

_LABELED_SALT = 0x5E3D  # keeps the labeled streams apart from the epochs' permutations


def batch_indices(num_examples, batch_size, step, seed):
  """Indices of the training batch at ``step``.

  Args:
    num_examples: N, the size of the split.
    batch_size: B, any positive size (it may exceed N).
    step: non-negative training step.
    seed: the run's data seed.

  Returns:
    int64 ``[batch_size]`` indices into the split.
  """
  if num_examples < 1 or batch_size < 1 or step < 0:
    raise DataError(f"batch_indices needs num_examples >= 1, batch_size >= 1 and step >= 0; "
                    f"got {num_examples}, {batch_size}, {step}")
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  indices = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    indices[in_epoch] = _epoch_permutation(num_examples, seed, int(epoch))[offsets[in_epoch]]
  return indices


def get_batch(dataset, split, step, batch_size, seed):
  """The training batch at ``step``, gathered with ``batch_indices``.

  Args:
    dataset: a ``Dataset``.
    split: 'train', 'valid' or 'test'.
    step: non-negative training step.
    batch_size: B.
    seed: the run's data seed.

  Returns:
    ``{'x': [B, *shape] float32, 'index': [B] int32}`` plus ``'label': [B]
    int32`` when the split has labels.
  """
  indices = batch_indices(dataset.num_examples[split], batch_size, step, seed)
  return _gather(dataset, split, indices)


def eval_batches(dataset, split, batch_size):
  """Iterates over a split in order, every batch of the same shape.

  The last batch is padded with copies of the split's last example (so padded
  rows stay valid inputs) and ``mask`` marks the real rows.

  Args:
    dataset: a ``Dataset``.
    split: 'train', 'valid' or 'test'.
    batch_size: B.

  Yields:
    ``{'x': [B, *shape], 'index': [B], 'mask': [B] bool}`` plus ``'label':
    [B]`` when the split has labels.
  """
  if batch_size < 1:
    raise DataError(f"eval batch_size must be >= 1, got {batch_size}")
  num_examples = dataset.num_examples[split]
  for start in range(0, num_examples, batch_size):
    positions = np.arange(start, start + batch_size)
    batch = _gather(dataset, split, np.minimum(positions, num_examples - 1))
    batch["mask"] = positions < num_examples
    yield batch


def labeled_subset(labels, per_class, seed):
  """Indices of a class-balanced labeled subset, for semi-supervised runs (4.5.3).

  ``per_class`` examples of every class, drawn without replacement by a generator
  of its own (``default_rng([seed, _LABELED_SALT])``; the seed picks one of the
  random splits the dissertation averages over), returned sorted.

  Args:
    labels: int ``[N]`` labels of the training split.
    per_class: examples kept per class.
    seed: the run's data seed.

  Returns:
    int64 ``[C * per_class]`` indices into the split.

  Raises:
    DataError: a class has fewer than ``per_class`` examples.
  """
  rng = np.random.default_rng([seed, _LABELED_SALT])
  classes, counts = np.unique(labels, return_counts=True)
  if per_class < 1 or counts.min() < per_class:
    raise DataError(f"labels_per_class={per_class} must be at least 1 and at most the size of "
                    f"the smallest class ({int(counts.min())} examples of class "
                    f"{int(classes[counts.argmin()])})")
  chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def labeled_seed(seed):
  """The data seed of the labeled batches (``batch_indices`` over the labeled subset),
  derived from the run's seed so that their order is not the unlabeled batches' order."""
  return int(np.random.SeedSequence([seed, _LABELED_SALT]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples, seed, epoch):
  permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
  permutation.setflags(write=False)
  return permutation


def _gather(dataset, split, indices):
  batch = {"x": dataset.splits[split][indices], "index": indices.astype(np.int32)}
  if dataset.labels[split] is not None:
    batch["label"] = dataset.labels[split][indices]
  return batch
