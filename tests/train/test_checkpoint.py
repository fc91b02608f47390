"""``dgm_jax.train.checkpoint``: a checkpoint that does not fit the config and one that is
damaged are told apart, each in one ConfigError that says what to do."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm_jax.train.checkpoint import Checkpointer
from dgm_jax.train.guards import ConfigError
from dgm_jax.train.state import TrainState


def _state(step, width=3):
  return TrainState(step=jnp.int32(step), params={"w": jnp.full((width,), float(step))},
                    opt_state={"m": jnp.zeros((width,))})


def _saved(tmp_path):
  checkpointer = Checkpointer(str(tmp_path))
  for step in (5, 10):
    checkpointer.save(_state(step))
  return checkpointer


def test_restores_the_newest_and_an_earlier_step(tmp_path):
  checkpointer = _saved(tmp_path)
  abstract = jax.eval_shape(lambda: _state(0))
  assert float(checkpointer.restore(abstract).params["w"][0]) == 10.0
  assert float(checkpointer.restore(abstract, 5).params["w"][0]) == 5.0


def test_other_shapes_are_a_config_mismatch(tmp_path):
  checkpointer = _saved(tmp_path)
  with pytest.raises(ConfigError, match=r"step 10 .* does not fit the config \(opt_state/m: the "
                     r"checkpoint has \(\(3,\), 'float(32|64)'\), the config needs \(\(4,\)"):
    checkpointer.restore(jax.eval_shape(lambda: _state(0, width=4)))


@pytest.mark.parametrize("damage", ["data", "metadata", "empty"])
def test_damaged_files_name_the_earlier_checkpoint_not_the_config(tmp_path, damage):
  """Garbage in an array file, in the metadata, or an emptied step folder: the config is
  right and the files are wrong, so the message says so and names step 5 (it used to
  advise using the config the checkpoint was written with)."""
  checkpointer = _saved(tmp_path)
  step_dir = os.path.join(checkpointer.directory, "10")
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
           if os.path.isfile(f)]
  if damage == "data":
    targets = [f for f in files if os.sep + "d" + os.sep in f]
  elif damage == "metadata":
    targets = [f for f in files if os.path.basename(f) == "_METADATA"]
  else:
    targets = files
  assert targets, files
  for path in targets:
    if damage == "empty":
      os.remove(path)
    else:
      with open(path, "wb") as f:
        f.write(b"\x00garbage" * 8)
  with pytest.raises(ConfigError) as raised:
    checkpointer.restore(jax.eval_shape(lambda: _state(0)))
  message = str(raised.value)
  assert "cannot be read" in message and "damaged" in message, message
  assert f"delete {step_dir} to resume from step 5" in message, message
  assert "does not fit the config" not in message


def test_a_read_error_drops_tensorstores_pointer_to_its_details(tmp_path):
  """Garbage in the array chunk of random weights (incompressible, so in a file of its own):
  TensorStore's error ends in a pointer to a bound method, which the line leaves out."""
  checkpointer = Checkpointer(str(tmp_path))
  def state(step):
    return TrainState(step=jnp.int32(step), params={"w": jax.random.normal(
        jax.random.PRNGKey(step), (1000,))}, opt_state={"m": jnp.zeros((1000,))})
  for step in (5, 10):
    checkpointer.save(state(step))
  chunks = glob.glob(os.path.join(checkpointer.directory, "10", "**", "d", "*"), recursive=True)
  with open(max(chunks, key=os.path.getsize), "wb") as f:
    f.write(np.random.default_rng(0).bytes(1000))
  with pytest.raises(ConfigError) as raised:
    checkpointer.restore(jax.eval_shape(lambda: state(0)))
  message = str(raised.value)
  assert "cannot be read (Exception: Encountered error while reading array" in message, message
  assert "See full TensorStore details" not in message and "bound method" not in message, message


def test_non_finite_values_read_back_are_damage(tmp_path):
  """Zeroed bytes in an array file can read back as NaN without an error; the loop saves
  finite states only, so ``is_finite`` failing means the files were damaged."""
  checkpointer = _saved(tmp_path)
  bad = _state(15)
  checkpointer.save(bad.replace(params={"w": jnp.array([1.0, jnp.nan, 2.0])}))
  abstract = jax.eval_shape(lambda: _state(0))
  def is_finite(state):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(state))
  with pytest.raises(ConfigError) as raised:
    checkpointer.restore(abstract, is_finite=is_finite)
  step_dir = os.path.join(checkpointer.directory, "15")
  assert "NaN or infinite values" in str(raised.value), raised.value
  assert f"delete {step_dir} to resume from step 10" in str(raised.value), raised.value
  assert float(checkpointer.restore(abstract, 10, is_finite=is_finite).params["w"][0]) == 10.0
