"""config_check.validate: a bad count stops with one message naming the key, before any
data is read; the shipped configs pass unchanged."""

import pytest

from configs import mnist
from dgm_jax.train import config_check
from dgm_jax.train.guards import ConfigError


@pytest.mark.parametrize("arg,method", [("smoke", "vae"), ("smoke", "stein_vae"), ("", "vae"),
                                        ("", "stein_vae"), ("smoke,semi", "stein_vae")])
def test_shipped_configs_pass(arg, method):
  config_check.validate(mnist.get_config(arg), method)


@pytest.mark.parametrize("key,value,needle", [
    ("train.prefetch_steps", 0, "must be a positive integer"),
    ("train.prefetch_steps", -3, "must be a positive integer"),
    ("eval.max_chunk", -1, "must be a positive integer"),
    ("eval.classifier_steps", 0, "must be a positive integer"),
    ("eval.valid_importance_samples", -5, "must be an integer >= 0"),
    ("eval.max_valid_examples", -2, "must be an integer >= 0"),
    ("eval.max_test_examples", -1, "must be an integer >= 0"),
    ("eval.num_score_samples", True, "must be an integer >= 0"),
    ("train.num_steps", True, "must be a positive integer"),
    ("data.batch_size", 0, "must be a positive integer"),
    ("seed", -1, "must be an integer >= 0 (numpy's generators take no negative seed)"),
])
def test_a_bad_count_is_one_problem_naming_its_key(key, value, needle):
  config = mnist.get_config("smoke")
  *section, name = key.split(".")
  with config.unlocked():
    (config[section[0]] if section else config)[name] = value
  with pytest.raises(ConfigError) as raised:
    config_check.validate(config, "vae")
  message = str(raised.value)
  assert message == f"invalid config: {key}={value!r} {needle}", message


@pytest.mark.parametrize("key,value", [("eval.max_test_examples", 0),
                                       ("eval.valid_importance_samples", 0),
                                       ("eval.num_score_samples", 0)])
def test_zero_turns_an_optional_count_off(key, value):
  config = mnist.get_config("smoke")
  section, name = key.split(".")
  config[section][name] = value
  config_check.validate(config, "vae")


def test_an_optional_count_may_be_left_out():
  config = mnist.get_config("smoke")
  del config.train["prefetch_steps"]
  del config.eval["max_chunk"]
  config_check.validate(config, "vae")
