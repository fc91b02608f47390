"""The training state pytree shared by every method (DESIGN section 4).

A method's parameters and optimizer states live in one ``TrainState``; methods
with several players (encoder / decoder / discriminators) keep one optimizer
state per player inside the same pytree, so checkpoints, sharding and the
non-finite guard treat every method alike.
"""

from typing import Any

import flax.struct
import jax.numpy as jnp

__all__ = ["TrainState"]


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to resume bit-for-bit.

  Attributes:
    step: scalar int32, the number of completed train steps.
    params: pytree of model parameters (a dict of players for multi-player methods).
    opt_state: pytree of optax states, one per player.
    extra: pytree of method-owned non-parameter state (e.g. running averages).
  """

  step: jnp.ndarray
  params: Any
  opt_state: Any
  extra: Any = flax.struct.field(default_factory=dict)
