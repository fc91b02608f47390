"""The interface between a method and the one training loop (DESIGN section 4).

A method is a bundle of pure functions closed over its config; the loop jits
them once, shards them over the mesh, checkpoints the ``TrainState`` they
produce and evaluates through the same bundle, whatever the method.
"""

from typing import Callable, NamedTuple, Optional

import optax

__all__ = ["Method", "DataSpec", "make_optimizer", "check_dropout", "LR_SCHEDULES"]

LR_SCHEDULES = ("constant", "geometric", "burda")


class DataSpec(NamedTuple):
  """What a method needs to know about its data (not the arrays themselves).

  Attributes:
    shape: per-example shape, e.g. (28, 28, 1).
    kind: the dataset kind ('grayscale8', 'continuous', ...).
    num_train: size of the training split.
    num_classes: number of label classes, or None.
  """

  shape: tuple
  kind: str
  num_train: int
  num_classes: Optional[int] = None


class Method(NamedTuple):
  """Pure functions of one method.

  Attributes:
    name: e.g. 'vae'.
    init: ``(key, batch) -> TrainState``.
    train_step: ``(state, batch, key) -> (state, metrics)``; metrics a flat dict of scalars.
    eval_step: ``(params, batch, key) -> {name: [B]}`` per-example metrics.
    log_likelihood: ``(params, batch, key, num_samples) -> [B]`` importance-sampled log p(x).
    sample: ``(params, key, num) -> [num, *shape]`` images in [0, 1].
    reconstruct: ``(params, batch, key) -> [B, *shape]`` in [0, 1].
    encoder_mean: ``(params, batch) -> [B, D]`` E_q[z | x], or None.
    laplace_log_likelihood: ``(params, batch, key, num_samples) -> [B]`` log p(x)
      importance sampled from a Laplace approximation of p(z | x) instead of the
      encoder (``eval.nll.laplace_log_likelihood``), or None.
    posterior_shape: ``(params, batch, key, num_samples) -> {name: [B]}``: num_samples
      draws of the encoder's q(z | x) against the Laplace approximation of
      p(z | x) (``eval.posterior_shape``), or None.
    semi_supervised: ``models.semi_supervised.Settings`` when the train step also
      takes ``x_labeled`` / ``label_labeled`` from a fixed labeled subset (4.4), else None.
  """

  name: str
  init: Callable
  train_step: Callable
  eval_step: Callable
  log_likelihood: Callable
  sample: Callable
  reconstruct: Callable
  encoder_mean: Optional[Callable] = None
  laplace_log_likelihood: Optional[Callable] = None
  posterior_shape: Optional[Callable] = None
  semi_supervised: Optional[NamedTuple] = None


def make_optimizer(section, num_steps, steps_per_epoch):
  """Adam with the learning-rate schedule named in a method's config section.

  Schedules: ``constant``; ``geometric`` (decays from ``learning_rate`` to
  ``learning_rate * final_lr_fraction`` over the run); ``burda`` (Burda et al.
  2016: stage i lasts 3^i epochs at ``learning_rate * 10^(-i/7)``, i = 0..7).

  Args:
    section: a config section with ``learning_rate``, ``lr_schedule``,
      ``final_lr_fraction``, ``adam_b1``, ``adam_b2``, ``adam_eps``.
    num_steps: total train steps.
    steps_per_epoch: steps in one pass over the training split.

  Returns:
    An ``optax.GradientTransformation``.
  """
  lr = section.learning_rate
  if section.lr_schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif section.lr_schedule == "geometric":
    schedule = optax.exponential_decay(lr, max(num_steps, 1), section.final_lr_fraction)
  elif section.lr_schedule == "burda":
    boundaries, total = {}, 0
    for stage in range(7):
      total += 3**stage * steps_per_epoch
      boundaries[total] = 10.0 ** (-1.0 / 7.0)
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f"unknown lr_schedule {section.lr_schedule!r}; choose one of {LR_SCHEDULES}")
  return optax.adam(schedule, b1=section.adam_b1, b2=section.adam_b2, eps=section.adam_eps)


def check_dropout(section):
  """The section's ``encoder_dropout`` rate; raises ValueError unless it is in [0, 1) and, when
  positive, the encoder is an MLP."""
  rate = section.get("encoder_dropout", 0.0)
  if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
    raise ValueError(f"encoder_dropout={rate!r} must be a probability in [0, 1)")
  if rate and section.get("encoder_arch", "mlp") != "mlp":
    raise ValueError(f"encoder_dropout={rate} applies to MLP encoders; encoder_arch="
                     f"{section.encoder_arch!r} has none: set encoder_dropout=0")
  return float(rate)
