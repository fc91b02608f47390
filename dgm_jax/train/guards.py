"""Guards that stop a run early with one clear message (DESIGN section 7)."""

import math

__all__ = ["ConfigError", "NonFiniteLossError", "first_non_finite"]


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
