"""Semi-supervised learning with a label decoder (section 4.4).

Labeled pairs ``(x_n, y_n)`` get the decoder ``p(x, y | z) = p(x | z; theta)
p(y | z; theta~)`` with ``p(y | z; theta~) = softmax(theta~ z)`` (4.5.3). Their
codes move with the scores of (4.54),
``grad_z [log p(x | z, theta) + zeta log p(y | z, theta~) + log p(z)]``, with
``zeta = N_X / (C rho)``: N_X the dimension of x, C the number of classes and
rho the proportion of labeled examples in the minibatch, so that a label weighs
as much as an image. Unlabeled codes move as in sections 4.2-4.3, the image
decoder theta learns from both (4.49) and theta~ from the labeled codes (4.51).

A training step sees ``B`` unlabeled images and ``B_l`` labeled pairs drawn from
a fixed, class-balanced subset of the training split (``data.pipeline``). The
unlabeled images are drawn from the whole split without their labels, as in
Kingma et al. (2014). This module holds the pieces the VAE and the Stein VAE
share: the settings, zeta, the label decoder, the merged batch and the test
error of the classifier ``argmax_y E_q[p(y | z)]``.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dgm_jax import likelihoods

__all__ = ["Settings", "settings_from", "label_weight", "LabelDecoder", "merged_batch",
           "label_log_prob", "prediction_errors"]


class Settings(NamedTuple):
  """What the loop needs to feed a semi-supervised method.

  Attributes:
    labels_per_class: size of the labeled subset per class (e.g. 10 or 100).
    labeled_batch_size: B_l, labeled pairs per step.
    num_classes: C.
  """

  labels_per_class: int
  labeled_batch_size: int
  num_classes: int


def settings_from(section, spec):
  """``Settings`` from a method section's ``semi_supervised`` keys, or None when off.

  Raises:
    ValueError: the switch is on but the data have no labels, or a size is not positive.
  """
  if not section.get("semi_supervised", False):
    return None
  if not spec.num_classes:
    raise ValueError("semi_supervised=True needs a labeled data set; this one has no labels")
  per_class, batch = section.labels_per_class, section.labeled_batch_size
  for name, value in (("labels_per_class", per_class), ("labeled_batch_size", batch)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive integer")
  return Settings(per_class, batch, spec.num_classes)


def label_weight(num_pixels, num_classes, labeled_fraction):
  """zeta = N_X / (C rho) of (4.54)."""
  return num_pixels / (num_classes * labeled_fraction)


class LabelDecoder(nn.Module):
  """Logits ``theta~ z`` of ``p(y | z) = softmax(theta~ z)`` (linear, no bias, as in 4.5.3)."""

  num_classes: int

  @nn.compact
  def __call__(self, z):
    return nn.Dense(self.num_classes, use_bias=False, name="theta_tilde")(z)


def merged_batch(x, x_labeled, labels, num_pixels, num_classes):
  """Stacks unlabeled and labeled images, with the per-example label weights.

  Args:
    x: [B, P] unlabeled images.
    x_labeled: [B_l, P] labeled images.
    labels: [B_l] their classes.
    num_pixels: N_X.
    num_classes: C.

  Returns:
    (images [B + B_l, P], labels [B + B_l] (0 where unlabeled), weights [B + B_l]:
    0 for unlabeled rows and zeta for labeled ones).
  """
  total = x.shape[0] + x_labeled.shape[0]
  zeta = label_weight(num_pixels, num_classes, x_labeled.shape[0] / total)
  images = jnp.concatenate([x, x_labeled], axis=0)
  all_labels = jnp.concatenate([jnp.zeros(x.shape[:1], jnp.int32), labels.astype(jnp.int32)])
  weights = jnp.concatenate([jnp.zeros(x.shape[:1]), jnp.full(x_labeled.shape[:1], zeta)])
  return images, all_labels, weights


def label_log_prob(logits_fn, z, labels, weights):
  """``weights * log p(y | z)``: z [B, ..., D], labels and weights [B] -> [B, ...]."""
  logits = logits_fn(z)
  extra = logits.ndim - 1 - labels.ndim  # particle / sample axes between B and C
  expand = (slice(None),) + (None,) * extra
  log_p = likelihoods.categorical_log_prob(
      jnp.broadcast_to(labels[expand], logits.shape[:-1]), logits)
  return weights[expand] * log_p


def prediction_errors(logits, labels):
  """Per-example 0/1 error of ``argmax_y mean_j softmax(logits_j)``.

  Args:
    logits: [B, J, C] label-decoder logits of J codes per example.
    labels: [B].

  Returns:
    [B] float32, 1 where the predicted class is wrong.
  """
  probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)
  return (jnp.argmax(probs, axis=-1) != labels).astype(jnp.float32)
