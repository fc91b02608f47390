"""Validation of a resolved config before any data is read or step compiled.

Every problem found is reported in one ``ConfigError`` naming the key, the
value and what would fix it (DESIGN section 7).
"""

from dgm_jax.data import registry
from dgm_jax.eval import classifier
from dgm_jax.nets import conv
from dgm_jax.train.guards import ConfigError

__all__ = ["validate", "REQUIRED_KEYS", "EARLY_STOPPING_METRICS"]

REQUIRED_KEYS = (
    "seed", "data.name", "data.data_dir", "data.batch_size", "train.num_steps",
    "train.log_every", "train.eval_every", "train.ckpt_every",
    "eval.num_importance_samples", "eval.batch_size",
)
_POSITIVE_INTS = ("data.batch_size", "train.num_steps", "train.log_every", "train.eval_every",
                  "train.ckpt_every", "eval.num_importance_samples", "eval.batch_size")
# Counts a config may leave out (the loop has defaults), checked when present.
_OPTIONAL_POSITIVE_INTS = ("train.prefetch_steps", "eval.max_chunk", "eval.classifier_steps")
_OPTIONAL_NON_NEGATIVE_INTS = (  # 0: skip it, or for max_*: no limit
    "eval.valid_importance_samples", "eval.max_valid_examples", "eval.max_test_examples",
    "eval.num_score_samples")
# Validation metrics early stopping can follow, and whether lower is better.
EARLY_STOPPING_METRICS = {"nll_nats": True, "error_rate": True, "elbo_nats": False}
# Network keys of a method section (checked where the section has them: asvae, ali, vae, stein_vae).
_ARCH_KEYS = ("encoder_arch", "decoder_arch")
_CONV_FEATURE_KEYS = ("encoder_conv_features", "decoder_conv_features")
_KERNEL_SIZE_KEYS = ("conv_first_kernel_size", "conv_kernel_size", "disc_kernel_size")


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
    problems.extend(_network_problems(config[method_name], method_name))
  for key in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
    value = _lookup(config, key)
    if value is not _MISSING and not _is_positive_int(value):
      problems.append(f"{key}={value!r} must be a positive integer")
  seed = _lookup(config, "seed")
  if seed is not _MISSING and not (_is_int(seed) and seed >= 0):
    problems.append(f"seed={seed!r} must be an integer >= 0 (numpy's generators take no "
                    "negative seed)")
  for key in _OPTIONAL_NON_NEGATIVE_INTS:
    value = _lookup(config, key)
    if value is not _MISSING and not (_is_int(value) and value >= 0):
      problems.append(f"{key}={value!r} must be an integer >= 0")
  name = _lookup(config, "data.name")
  if name is not _MISSING and name not in registry.available():
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
  for key in _KERNEL_SIZE_KEYS:
    if key in section and not _is_positive_int(section[key]):
      problems.append(f"{method_name}.{key}={section[key]!r} must be a positive integer")
  depth = section.get("conv_stage_depth", 0)
  if not (isinstance(depth, int) and depth >= 0):
    problems.append(f"{method_name}.conv_stage_depth={depth!r} must be an integer >= 0")
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
