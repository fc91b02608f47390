"""Data layer: named datasets with fixed splits, batching, and per-batch transforms.

``load(name)`` gives the datasets of chapters 4-5 (MNIST and its 50K/10K/10K
split of section 4.5.2, Fashion-MNIST, CIFAR-10, scikit-learn digits, and the
synthetic toys of section 4.5.1); ``pipeline`` turns a ``Dataset`` into
stateless training batches and padded evaluation batches; ``transforms``
binarizes or dequantizes them inside the jitted step.
"""

from dgm_jax.data.pipeline import batch_indices, eval_batches, get_batch
from dgm_jax.data.registry import DataError, Dataset, available, load

__all__ = ["load", "available", "Dataset", "DataError", "batch_indices", "get_batch",
           "eval_batches"]
