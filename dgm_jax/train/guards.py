"""Guards that stop a run early with one clear message (DESIGN section 7)."""

import math

__all__ = ["ConfigError", "NonFiniteLossError", "NonFiniteStateError", "first_non_finite"]


class ConfigError(ValueError):
  """A configuration value that cannot run; the message says what to change."""


class NonFiniteLossError(FloatingPointError):
  """A train metric became NaN or infinite; carries the step where it happened."""

  def __init__(self, step, name, value, last_checkpoint):
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept"
            if last_checkpoint is not None else
            f"no checkpoint before step {step - 1}, whose state gave it, is left")
    super().__init__(
        f"non-finite {name}={value} at step {step}; training stopped and {kept}. "
        "Lower the learning rate or check the data scaling.")
    self.step = step
    self.last_checkpoint = last_checkpoint


class NonFiniteStateError(NonFiniteLossError):
  """The state after a step is unusable: its parameters or optimizer state are NaN or
  infinite, or its validation metrics are (checked before its checkpoint: a step's train
  metrics describe the state before its update, so the last update's result would
  otherwise be saved and evaluated unchecked)."""

  def __init__(self, step, last_checkpoint, what="parameters or optimizer state"):
    # pylint: disable=super-init-not-called
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept"
            if last_checkpoint is not None else "no checkpoint was written")
    FloatingPointError.__init__(
        self, f"non-finite {what} at step {step} (after its update); training stopped before "
        f"saving that state and {kept}. Lower the learning rate or check the data scaling.")
    self.step = step
    self.last_checkpoint = last_checkpoint


def first_non_finite(history):
  """Finds the first non-finite scalar in a list of (step, metrics dict).

  Returns:
    ``(step, name, value)`` or None when every value is finite.
  """
  for step, metrics in history:
    for name, value in metrics.items():
      if not math.isfinite(float(value)):
        return step, name, float(value)
  return None
