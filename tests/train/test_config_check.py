"""config_check.validate: a bad count, size, range or choice stops with one message naming the
key, before any data is read or a network built; the shipped configs pass unchanged."""

import json

import pytest

from configs import common, gmm, mnist, pfa
from dgm_jax.train import config_check, loop
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
    ("seed", -1, "must be an integer in [0, 2**32) (numpy's generators take no negative "
     "seed, jax.random.PRNGKey none past 64 bits)"),
    ("seed", 2**64, "must be an integer in [0, 2**32) (numpy's generators take no negative "
     "seed, jax.random.PRNGKey none past 64 bits)"),
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


def test_the_optional_defaults_are_the_shipped_ones():
  """A key left out means what configs/common.base_config sets it to."""
  shipped = common.base_config("mnist", batch_size=100)
  for key, value in config_check.OPTIONAL_DEFAULTS.items():
    node = shipped
    for part in key.split("."):
      node = node[part]
    assert node == value and type(node) is type(value), (key, node, value)


def test_a_run_without_the_optional_keys_trains_with_their_defaults(tmp_path):
  """Every key of OPTIONAL_DEFAULTS left out: the smoke VAE runs to the end (they used to
  be read as attributes: an AttributeError traceback, for eval.max_chunk after training)
  and its config.json holds the defaults."""
  config = mnist.get_config("smoke")
  config.data.name = "digits"  # bundled with scikit-learn: no data set needed
  for key in config_check.OPTIONAL_DEFAULTS:
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    del node[name]
  config_check.validate(config, "vae")  # left out is not a problem
  results = loop.run(config, str(tmp_path / "run"), "vae")
  assert results["steps"] == 20 and results["nll_num_samples"] == 8
  written = json.loads((tmp_path / "run" / "config.json").read_text())
  for key, value in config_check.OPTIONAL_DEFAULTS.items():
    node = written
    for part in key.split("."):
      node = node[part]
    assert node == value, key


@pytest.mark.parametrize("method,key,value,needle", [
    ("stein_vae", "latent_dim", 0, "must be a positive integer"),
    ("stein_vae", "num_particles", -1, "must be a positive integer"),
    ("stein_vae", "encoder_steps", 0, "must be a positive integer"),
    ("vae", "num_samples", 0, "must be a positive integer"),
    ("asvae", "flow_length", -1, "must be an integer >= 0"),
    ("stein_vae", "encoder_hidden", (200, 0), "must be a tuple of positive integers"),
    ("vae", "hidden_sizes", (-200,), "must be a tuple of positive integers"),
    ("stein_vae", "learning_rate", float("nan"), "must be a finite number in (0.0, inf)"),
    ("vae", "learning_rate", 0.0, "must be a finite number in (0.0, inf)"),
    ("stein_vae", "svgd_step_size", float("inf"), "must be a finite number in (0.0, inf)"),
    ("vae", "final_lr_fraction", 0.0, "must be a finite number in (0.0, inf)"),
    ("vae", "adam_b1", 1.0, "must be a finite number in [0.0, 1.0)"),
    ("stein_vae", "repulsion_scale", -1.0, "must be a finite number in [0.0, inf)"),
    ("stein_vae", "activation", "gelu2", "is not one of"),
    ("asvae", "disc_activation", "swish2", "is not one of"),
    ("stein_vae", "bandwidth_convention", "silverman", "is not one of 'liu_wang', 'paper', "
     "'median'"),
    ("vae", "lr_schedule", "cosine", "is not one of 'constant', 'geometric', 'burda'"),
    ("vae", "likelihood", "gaussian", "is not one of"),
    ("stein_vae", "svgd_steps", 0, "must be a positive integer"),
    ("stein_vae", "decoder_codes", "final", "is not one of 'initial', 'moved'"),
])
def test_a_bad_section_value_is_one_problem_naming_its_key(method, key, value, needle):
  config = mnist.get_config("smoke")
  config[method][key] = value
  with pytest.raises(ConfigError) as raised:
    config_check.validate(config, method)
  message = str(raised.value)
  assert message.startswith(f"invalid config: {method}.{key}={value!r} {needle}"), message
  assert ";" not in message, message  # the one problem


def test_every_problem_is_listed_once_and_lists_are_widths():
  config = mnist.get_config("smoke")
  config.stein_vae.latent_dim = 0
  config.stein_vae.activation = "gelu2"
  with pytest.raises(ConfigError) as raised:
    config_check.validate(config, "stein_vae")
  message = str(raised.value)
  assert message.count("latent_dim=0") == 1 and message.count("gelu2") == 1, message
  config = mnist.get_config("smoke")
  config.stein_vae.encoder_hidden = [64, 32]  # a list from a sweep's JSON is a width tuple too
  config_check.validate(config, "stein_vae")


@pytest.mark.parametrize("module,arg,sections", [(gmm, "", ("stein_vae", "vae")),
                                                 (gmm, "bimodal,shifted", ("stein_vae", "vae")),
                                                 (gmm, "smoke", ("stein_vae", "vae")),
                                                 (pfa, "", ("stein_vae", "vae", "gibbs")),
                                                 (pfa, "smoke", ("stein_vae", "vae", "gibbs"))])
def test_shipped_toy_configs_pass(module, arg, sections):
  config_check.validate_toy(module.get_config(arg), sections)


@pytest.mark.parametrize("module,key,value,needle", [
    (gmm, "data.batch_size", 0, "data.batch_size=0 must be a positive integer"),
    (gmm, "train.log_every", -1, "train.log_every=-1 must be a positive integer"),
    (gmm, "eval.num_posterior_samples", 1, "eval.num_posterior_samples=1 must be an integer >= 2"),
    (gmm, "stein_vae.input_scale", 0.0, "stein_vae.input_scale=0.0 must be a finite number"),
    (gmm, "vae.activation", "gelu2", "vae.activation='gelu2' is not one of"),
    (gmm, "eval.num_plot_points", 0, "eval.num_plot_points=0 must be a positive integer"),
    (pfa, "eval.plot_point", 20, "eval.plot_point=20 must index a test point: an integer in "
     "[0, data.options.num_test=20)"),
    (pfa, "eval.num_plot_factors", 0, "eval.num_plot_factors=0 must be a positive integer"),
    (pfa, "gibbs.thin", 0, "gibbs.thin=0 must be a positive integer"),
    (pfa, "gibbs.num_chains", 0, "gibbs.num_chains=0 must be a positive integer"),
    (pfa, "gibbs.num_burnin", -1, "gibbs.num_burnin=-1 must be an integer >= 0"),
    (pfa, "gibbs.num_draws", 19, "gibbs.num_draws=19 keeps fewer than two draws at thin=10"),
])
def test_a_bad_toy_value_is_one_problem_naming_its_key(module, key, value, needle):
  config = module.get_config("")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError) as raised:
    config_check.validate_toy(config, ("stein_vae", "vae", "gibbs"))
  message = str(raised.value)
  assert message.startswith(f"invalid config: {needle}") and ";" not in message, message


@pytest.mark.parametrize("method", ["stein_vae", "vae"])
def test_a_toy_config_given_to_an_image_experiment_names_the_toys_launcher(method):
  """configs/gmm.py has a stein_vae section, but not the image model's keys: it stopped in
  make_method with AttributeError: 'latent_dim'."""
  with pytest.raises(ConfigError) as raised:
    config_check.validate(gmm.get_config("smoke"), method)
  message = str(raised.value)
  assert "python -m experiments.gmm --config=configs/gmm.py" in message, message
  assert f"section '{method}' has no latent_dim" in message, message


@pytest.mark.parametrize("module", ["dgm_jax.models.vae", "dgm_jax.models.asvae",
                                    "dgm_jax.models.stein_vae", "dgm_jax.train.config_check"])
def test_each_module_imports_first_in_a_fresh_process(module):
  """config_check reads its choices from the model modules, which import the train package
  (and so config_check): a top-level import of them there was a cycle when a test module
  imported ``dgm_jax.models.vae`` first."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
