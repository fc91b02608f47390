"""Per-batch transforms of image data: binarization and dequantization (sections 4.5.2, 5.3.1).

MNIST is modeled as binary: each [0, 1] pixel is the probability of an "on" pixel
(section 5.3.1), redrawn at every step (``dynamic_binarize``), drawn once per
example (``static_binarize``) or thresholded (``fixed_binarize``). Natural images
are modeled as continuous by uniform dequantization, ``(255 x + u) / 256`` with
``u ~ U[0, 1)``, which maps level k into the bin ``[k/256, (k+1)/256)`` that the
discretized likelihoods of ``dgm_jax.likelihoods`` integrate over. All functions
are pure jax and keep the input's dtype.
"""

import jax
import jax.numpy as jnp

__all__ = ["dynamic_binarize", "static_binarize", "fixed_binarize", "uniform_dequantize",
           "scale_to_unit"]


def dynamic_binarize(key, x):
  """Draws binary pixels with ``P(1) = x``, a fresh draw for every key.

  Args:
    key: jax PRNG key (derive it from the step for reproducible runs).
    x: probabilities in [0, 1], any shape, e.g. ``[B, 28, 28, 1]``.

  Returns:
    0/1 values of ``x``'s shape and dtype.
  """
  return jax.random.bernoulli(key, x).astype(x.dtype)


def static_binarize(x, index, seed=0):
  """Bernoulli(x) draws fixed per example: the same example always binarizes the same way.

  Each example's draw depends only on ``(seed, index)``, so the result does not
  depend on batch composition or order.

  Args:
    x: probabilities in [0, 1], ``[B, ...]``.
    index: ``[B]`` integer position of each example in its split (the
      ``'index'`` entry of ``pipeline.get_batch``).
    seed: fixes the binarization of the whole split.

  Returns:
    0/1 values of ``x``'s shape and dtype.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(index)
  return jax.vmap(dynamic_binarize)(keys, x)


def fixed_binarize(x, threshold=0.5):
  """Deterministic binarization: 1 where ``x > threshold``, else 0, in ``x``'s dtype."""
  return (x > threshold).astype(x.dtype)


def uniform_dequantize(key, x, num_levels=256):
  """Uniform dequantization of quantized [0, 1] data, ``(k + u) / num_levels`` (section 5.3.1).

  ``x`` holds levels ``k / (num_levels - 1)``; the result lies in the bin
  ``[k / num_levels, (k + 1) / num_levels)`` of the discretized likelihoods,
  clamped below the upper edge so rounding never moves it into the next bin.

  Args:
    key: jax PRNG key.
    x: quantized values in [0, 1], any shape, e.g. ``[B, 32, 32, 3]``.
    num_levels: number of levels (256 for 8-bit data; ``Dataset.num_levels``).

  Returns:
    Continuous values in [0, 1) of ``x``'s shape and dtype.
  """
  level = jnp.round(x * (num_levels - 1))
  noise = jax.random.uniform(key, x.shape, x.dtype)
  upper_edge = (level + 1) / num_levels
  return jnp.minimum((level + noise) / num_levels, jnp.nextafter(upper_edge, jnp.zeros_like(x)))


def scale_to_unit(x, max_value=255):
  """Integer pixels in [0, max_value] -> floats in [0, 1] (float32 unless x is floating)."""
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  return jnp.asarray(x, dtype) / max_value
