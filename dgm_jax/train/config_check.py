"""Validation of a resolved config before any data is read or step compiled.

Every problem found is reported in one ``ConfigError`` naming the key, the
value and what would fix it (DESIGN section 7).
"""

import math

from dgm_jax.data import registry
from dgm_jax.eval import classifier
from dgm_jax.nets import conv
from dgm_jax.train.guards import ConfigError

__all__ = ["validate", "validate_toy", "section_problems", "fill_defaults", "REQUIRED_KEYS",
           "OPTIONAL_DEFAULTS", "EARLY_STOPPING_METRICS"]

REQUIRED_KEYS = (
    "seed", "data.name", "data.data_dir", "data.batch_size", "train.num_steps",
    "train.log_every", "train.eval_every", "train.ckpt_every",
    "eval.num_importance_samples", "eval.batch_size",
)
# Keys a config may leave out, and the value ``fill_defaults`` gives them (the values of
# configs/common.base_config; tests/train/test_config_check.py keeps the two equal).
OPTIONAL_DEFAULTS = {
    "distributed": False, "train.tensorboard": True, "train.prefetch_steps": 50,
    "train.early_stopping": "", "eval.valid_importance_samples": 100, "eval.max_chunk": 500,
    "eval.binarization_seed": 0, "eval.max_valid_examples": 2000, "eval.max_test_examples": 0,
    "eval.classifier": "", "eval.classifier_steps": 3000, "eval.num_score_samples": 10_000,
}
_POSITIVE_INTS = ("data.batch_size", "train.num_steps", "train.log_every", "train.eval_every",
                  "train.ckpt_every", "eval.num_importance_samples", "eval.batch_size")
# Counts a config may leave out (OPTIONAL_DEFAULTS), checked when present.
_OPTIONAL_POSITIVE_INTS = ("train.prefetch_steps", "eval.max_chunk", "eval.classifier_steps")
_OPTIONAL_NON_NEGATIVE_INTS = (  # 0: skip it, or for max_*: no limit
    "eval.valid_importance_samples", "eval.max_valid_examples", "eval.max_test_examples",
    "eval.num_score_samples")
# Validation metrics early stopping can follow, and whether lower is better.
EARLY_STOPPING_METRICS = {"nll_nats": True, "error_rate": True, "elbo_nats": False}
# Network keys of a method section (checked where the section has them: asvae, ali, vae, stein_vae).
_ARCH_KEYS = ("encoder_arch", "decoder_arch")
_CONV_FEATURE_KEYS = ("encoder_conv_features", "decoder_conv_features")
# Data sets of the posterior toys, which have launchers of their own.
_TOYS = ("gmm", "pfa")
# Keys of any model section (the methods' and the toys'), checked where a section has them, so a
# zero size or a misspelled choice stops here in one line, not in a flax or XLA traceback.
_SECTION_POSITIVE_INTS = (
    "latent_dim", "num_particles", "encoder_steps", "decoder_samples", "num_samples",
    "labeled_batch_size", "labels_per_class", "entropy_particles", "eval_elbo_samples",
    "svgd_steps",
    "num_chains", "thin", "num_draws", "conv_first_kernel_size", "conv_kernel_size",
    "disc_kernel_size")
_SECTION_NON_NEGATIVE_INTS = ("flow_length", "decoder_grad_particles", "encoder_fit_particles",
                              "num_burnin", "conv_stage_depth")
# Hidden-layer widths: a tuple of positive integers (empty: no hidden layer).
_SECTION_WIDTHS = ("encoder_hidden", "decoder_hidden", "hidden_sizes", "disc_joint_hidden",
                   "disc_z_hidden", "disc_x_features")
# key -> (low, high, low included, high included) for finite floats.
_SECTION_RANGES = {
    "learning_rate": (0.0, None, False, False), "disc_learning_rate": (0.0, None, False, False),
    "svgd_step_size": (0.0, None, False, False), "prior_std": (0.0, None, False, False),
    "input_scale": (0.0, None, False, False), "relaxation_temperature": (0.0, None, False, False),
    "adam_eps": (0.0, None, False, False),
    # > 1 is a growing rate (a test drives a run to diverge with it); 0 made optax's
    # exponential_decay a constant schedule without a word
    "final_lr_fraction": (0.0, None, False, False),
    "adam_b1": (0.0, 1.0, True, False), "adam_b2": (0.0, 1.0, True, False),
    "encoder_dropout": (0.0, 1.0, True, False), "repulsion_scale": (0.0, None, True, False),
    "entropy_weight": (0.0, None, True, False), "disc_gradient_penalty": (0.0, None, True, False),
    "flow_init_scale": (0.0, None, True, False)}


def fill_defaults(config):
  """Sets each key of ``OPTIONAL_DEFAULTS`` that ``config`` leaves out (in place), so that
  the loop and the models read every key as an attribute; a missing section is created.
  Keys the config has keep their values, to be checked by :func:`validate`."""
  with config.unlocked():
    for key, value in OPTIONAL_DEFAULTS.items():
      *sections, name = key.split(".")
      node = config
      for section in sections:
        if section not in node:
          node[section] = {}
        node = node[section]
      if hasattr(node, "get") and name not in node:
        node[name] = value


def validate(config, method_name):
  """Raises ConfigError listing every problem of ``config`` for ``method_name``."""
  problems = []
  for key in REQUIRED_KEYS:
    if _lookup(config, key) is _MISSING:
      problems.append(f"missing key {key}")
  if method_name not in config:
    problems.append(f"the config has no '{method_name}' section for this method "
                    f"(sections: {', '.join(k for k in config.keys())})")
  elif hasattr(config[method_name], "get"):
    if "latent_dim" not in config[method_name]:
      problems.append(f"section '{method_name}' has no latent_dim: not a config of this "
                      "experiment's models (configs/mnist.py, cifar10.py, fashion_mnist.py)")
    problems.extend(_network_problems(config[method_name], method_name))
    problems.extend(section_problems(config[method_name], method_name))
  for key in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
    value = _lookup(config, key)
    if value is not _MISSING and not _is_positive_int(value):
      problems.append(f"{key}={value!r} must be a positive integer")
  seed = _lookup(config, "seed")
  if seed is not _MISSING and not (_is_int(seed) and 0 <= seed < 2**32):
    problems.append(f"seed={seed!r} must be an integer in [0, 2**32) (numpy's generators take "
                    "no negative seed, jax.random.PRNGKey none past 64 bits)")
  for key in _OPTIONAL_NON_NEGATIVE_INTS:
    value = _lookup(config, key)
    if value is not _MISSING and not (_is_int(value) and value >= 0):
      problems.append(f"{key}={value!r} must be an integer >= 0")
  name = _lookup(config, "data.name")
  if name in _TOYS:
    problems.append(f"data.name={name!r} is a posterior toy with no images: run it with "
                    f"python -m experiments.{name} --config=configs/{name}.py")
  elif name is not _MISSING and name not in registry.available():
    problems.append(f"data.name={name!r} is not a known data set; available: "
                    f"{', '.join(registry.available())}")
  problems.extend(_early_stopping_problems(config))
  spec = config.get("eval", {}).get("classifier", "")
  if spec:  # a plug-in classifier must import now, not after hours of training
    try:
      classifier.parse_spec(spec)
    except classifier.ClassifierSpecError as error:
      problems.append(str(error))
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))


def validate_toy(config, sections):
  """Raises ConfigError listing every problem of a posterior toy's ``config`` (gmm, pfa).

  Args:
    config: the toy's config.
    sections: the model sections it trains (e.g. ``("stein_vae", "vae", "gibbs")``).
  """
  problems = []
  for key in ("data.batch_size", "train.num_steps", "train.log_every"):
    value = _lookup(config, key)
    if value is _MISSING or not _is_positive_int(value):
      problems.append(f"{key}={value if value is not _MISSING else None!r} must be a positive "
                      "integer")
  samples = _lookup(config, "eval.num_posterior_samples")
  if samples is not _MISSING and not (_is_int(samples) and samples >= 2):
    problems.append(f"eval.num_posterior_samples={samples!r} must be an integer >= 2 (sample "
                    "covariances and the MMD need two)")
  for key in ("eval.num_plot_points", "eval.num_plot_factors"):  # the figures' counts
    value = _lookup(config, key)
    if value is not _MISSING and not _is_positive_int(value):
      problems.append(f"{key}={value!r} must be a positive integer")
  point, num_test = _lookup(config, "eval.plot_point"), _lookup(config, "data.options.num_test")
  if point is not _MISSING and not (_is_int(point) and point >= 0 and (
      num_test is _MISSING or not _is_int(num_test) or point < num_test)):
    problems.append(f"eval.plot_point={point!r} must index a test point: an integer in "
                    f"[0, data.options.num_test={num_test if num_test is not _MISSING else '?'})")
  for name in sections:
    if name in config:
      problems.extend(section_problems(config[name], name))
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))


def section_problems(section, name):
  """Bad sizes, ranges and choices among the keys a model section ``name`` has."""
  problems = []
  for key in _SECTION_POSITIVE_INTS:
    if key in section and not _is_positive_int(section[key]):
      problems.append(f"{name}.{key}={section[key]!r} must be a positive integer")
  for key in _SECTION_NON_NEGATIVE_INTS:
    if key in section and not (_is_int(section[key]) and section[key] >= 0):
      problems.append(f"{name}.{key}={section[key]!r} must be an integer >= 0")
  for key in _SECTION_WIDTHS:
    value = section.get(key, ())
    if not (isinstance(value, (tuple, list)) and all(_is_positive_int(v) for v in value)):
      problems.append(f"{name}.{key}={value!r} must be a tuple of positive integers (layer "
                      "widths), e.g. (200, 200)")
  for key, (low, high, low_in, high_in) in _SECTION_RANGES.items():
    if key in section and not _in_range(section[key], low, high, low_in, high_in):
      interval = ("[" if low_in else "(") + f"{low}, " + (
          f"{high}" + ("]" if high_in else ")") if high is not None else "inf)")
      problems.append(f"{name}.{key}={section[key]!r} must be a finite number in {interval}")
  for key, choices in _section_choices().items():
    if key in section and section[key] not in choices:
      problems.append(f"{name}.{key}={section[key]!r} is not one of "
                      f"{', '.join(map(repr, choices))}")
  if ("thin" in section and "num_draws" in section and _is_positive_int(section.thin)
      and _is_int(section.num_draws) and section.num_draws < 2 * section.thin):
    problems.append(f"{name}.num_draws={section.num_draws!r} keeps fewer than two draws at "
                    f"thin={section.thin!r} (give num_draws >= 2 * thin)")
  return problems


def _section_choices():
  """key -> allowed values, from the modules that read them. Imported here, not at the top:
  ``models.vae`` imports ``train.state``, whose package imports the loop and so this module,
  so a top-level import of the models here is a cycle when ``models.vae`` is imported first."""
  # pylint: disable=import-outside-toplevel
  from dgm_jax import kernels, svgd
  from dgm_jax.models import asvae, base, stein_vae, vae
  from dgm_jax.nets import discriminators, mlp, recognition
  return {
      "activation": tuple(sorted(mlp.ACTIVATIONS)),
      "disc_activation": tuple(sorted(mlp.ACTIVATIONS)),
      "bandwidth_convention": kernels.BANDWIDTH_CONVENTIONS, "kernel": svgd.KERNELS,
      "encoder_output": recognition.ENCODER_OUTPUTS,
      "preconditioner": stein_vae.PRECONDITIONERS, "fit_metric": stein_vae.FIT_METRICS,
      "entropy_weights": stein_vae.ENTROPY_WEIGHTS, "decoder_codes": stein_vae.DECODER_CODES,
      "lr_schedule": base.LR_SCHEDULES,
      "objective": vae.OBJECTIVES, "likelihood": vae.LIKELIHOODS,
      "variant": asvae.VARIANTS, "decoded_x": asvae.DECODED_X,
      "decoder_pair_encoder_input": asvae.DECODER_PAIR_ENCODER_INPUTS,
      "disc_trunk": discriminators.TRUNKS,
  }


def _in_range(value, low, high, low_in, high_in):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return False
  above = value >= low if low_in else value > low
  below = high is None or (value <= high if high_in else value < high)
  return above and below


def _early_stopping_problems(config):
  """``train.early_stopping`` must name a validation metric the run computes."""
  metric = config.get("train", {}).get("early_stopping", "")
  if not metric:
    return []
  if metric not in EARLY_STOPPING_METRICS:
    return [f"train.early_stopping={metric!r} is not one of "
            f"{', '.join(map(repr, EARLY_STOPPING_METRICS))} ('' turns it off)"]
  if metric == "nll_nats" and not config.get("eval", {}).get("valid_importance_samples", 0):
    return ["train.early_stopping='nll_nats' needs eval.valid_importance_samples > 0 (the "
            "validation NLL); or stop on 'elbo_nats'"]
  return []


def _network_problems(section, method_name):
  """Bad values of the architecture keys (``nets.conv``) that ``section`` has."""
  problems = []
  for key in _ARCH_KEYS:
    if key in section and section[key] not in conv.ARCHS:
      problems.append(f"{method_name}.{key}={section[key]!r} is not a network architecture; "
                      f"choose one of {', '.join(map(repr, conv.ARCHS))}")
  for key in _CONV_FEATURE_KEYS:
    value = section.get(key, (1,))
    if not (isinstance(value, (tuple, list)) and value and all(_is_positive_int(v) for v in value)):
      problems.append(f"{method_name}.{key}={value!r} must be a non-empty tuple of positive "
                      "integers (channels per stride-2 stage)")
  return problems


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value):
  return _is_int(value) and value >= 1


_MISSING = object()


def _lookup(config, dotted):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node
