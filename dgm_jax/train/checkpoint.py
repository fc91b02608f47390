"""Orbax checkpoints of the train state under ``<workdir>/checkpoints``
(and, with early stopping, the best validated state under ``<workdir>/best``; DESIGN
sections 3 and 9.5).

Restoring goes through the abstract state from ``jax.eval_shape(init)``
(shapes, dtypes and target shardings), so a resumed run gets arrays laid out
on the mesh exactly like a fresh one.
"""

import os

import jax
import orbax.checkpoint as ocp

from dgm_jax.train.guards import ConfigError

__all__ = ["Checkpointer"]


class Checkpointer:
  """Saves and restores ``TrainState`` pytrees by step number."""

  def __init__(self, workdir, max_to_keep=2, subdir="checkpoints"):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self):
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    """The saved steps."""
    return list(self._manager.all_steps())

  def save(self, state):
    """Saves ``state`` under its own step number (no-op if already saved)."""
    step = int(jax.device_get(state.step))
    if self._manager.latest_step() == step:
      return step
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()
    return step

  def delete_from(self, step):
    """Deletes every checkpoint at ``step`` or later; returns the newest one left (or None)."""
    for saved in self.all_steps():
      if saved >= step:
        self._manager.delete(saved)
    return self.latest_step()

  def restore(self, abstract_state, step=None, is_finite=None):
    """Restores into the shapes and shardings of ``abstract_state``.

    ``is_finite(state) -> bool`` checks the values read: the loop saves only finite
    states, so a restored one with NaN or infinite values was damaged on disk (orbax
    reads zeroed bytes of an array file without complaint).

    Raises:
      ConfigError: the checkpoint's arrays (names, shapes, dtypes) are not those of
        ``abstract_state``, found from the checkpoint's metadata before any array is
        read (a failed orbax restore leaves threads that print a traceback); or its
        files cannot be read or hold non-finite values (damaged), naming the newest
        earlier checkpoint.
    """
    step = self.latest_step() if step is None else step
    try:
      self._check_fits(abstract_state, step)
      state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except _Mismatch as error:
      raise ConfigError(
          f"the checkpoint at step {step} in {self.directory} does not fit the config "
          f"({str(error)[:300]}); use the config it was written with (the workdir's "
          "config.json) or a new --workdir") from None
    except Exception as error:  # pylint: disable=broad-except  # unreadable: damaged
      raise self._damaged(step, _first_sentence(error)) from None
    if is_finite is not None and not is_finite(state):
      raise self._damaged(step, "it holds NaN or infinite values, which no saved state had")
    return state

  def _damaged(self, step, reason):
    """The error of a checkpoint whose arrays fit the config but cannot be read."""
    earlier = [s for s in self.all_steps() if s < step]
    where = os.path.join(self.directory, str(step))
    fix = (f"delete {where} to resume from step {max(earlier)}" if earlier
           else f"delete {where} to start over")
    return ConfigError(
        f"the checkpoint at step {step} in {self.directory} cannot be read ({reason}): "
        f"it is damaged (a full disk, or a copy cut short); {fix}, or use a new --workdir")

  def _check_fits(self, abstract_state, step):
    reader = ocp.CheckpointManager(self.directory, item_handlers=ocp.StandardCheckpointHandler())
    try:
      saved = _array_specs(reader.item_metadata(step))
    finally:
      reader.close()
    if not saved:  # an emptied step folder reads as a checkpoint of nothing
      raise OSError("its metadata lists no arrays")
    wanted = _array_specs(abstract_state)
    if saved == wanted:
      return
    for name in sorted(set(saved) | set(wanted)):
      if saved.get(name) != wanted.get(name):
        have, need = saved.get(name, "no such array"), wanted.get(name, "no such array")
        raise _Mismatch(f"{name}: the checkpoint has {have}, the config needs {need}")

  def close(self):
    self._manager.close()


def _first_sentence(error):
  """``Type: message`` of a read error, cut before TensorStore's pointer to its details."""
  text = str(error).splitlines()[0] if str(error) else ""
  text = text.split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:200]}"


class _Mismatch(ValueError):
  """The checkpoint's arrays are not the config's (names, shapes or dtypes)."""


def _array_specs(tree):
  """``{'params/decoder/w': ((50, 200), 'float32'), ...}`` of a state or its metadata."""
  def name(key):
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)
  return {"/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
