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
