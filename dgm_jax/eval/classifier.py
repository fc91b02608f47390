"""Classifier score of generated images and reconstruction RMSE (chapter 5, section 5.3).

Section 5.3 scores samples with the inception score (Salimans et al. 2016),

    IS = exp(E_{x ~ q(x)} KL(p(y | x) || p(y))),

where p(y | x) is the Inception network's class distribution for a generated
image x and p(y) = E_x p(y | x) the marginal over the samples, and it reports
the RMSE of reconstructions of test images. The Inception network cannot be
downloaded here, so :func:`classifier_score` applies the same formula with a
classifier the project trains on the labelled train split of the same data set
(:class:`SmallCNN`: two strided convolutions, a hidden dense layer). Its values lie
in [1, number of classes] and rank methods against each other within this
project; they are not comparable with published inception scores, which use
Inception's 1,000 ImageNet classes.

The classifier is pluggable (config key ``eval.classifier``): ``''`` is the
project's classifier, trained once per data set and cached under
``$DGM_JAX_CACHE_DIR/classifiers`` (default ``~/.cache/dgm_jax/classifiers``);
``'module.path:function'`` names a user function ``f(dataset_name)`` returning
``probs_fn(images) -> [N, C]`` class probabilities for ``[N, H, W, C]`` images
in [0, 1].
"""

import functools
import hashlib
import importlib
import json
import math
import os
import tempfile
import warnings
from typing import Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special
from jax.scipy.special import logsumexp

__all__ = [
    "classifier_score", "classifier_score_from_log_probs", "classifier_score_terms", "rmse",
    "SmallCNN",
    "train_classifier", "predict_probs", "accuracy", "project_classifier", "resolve_classifier",
    "parse_spec", "cache_dir", "ClassifierSpecError", "CACHE_DIR_ENV", "DEFAULT_BATCH_SIZE",
]

CACHE_DIR_ENV = "DGM_JAX_CACHE_DIR"
DEFAULT_BATCH_SIZE = 128
_LEARNING_RATE = 1e-3
_VERSION = 1  # bump when SmallCNN or its training changes: old cache files are then ignored


# ----------------------------------------------------------------------------- pure scores

@jax.jit
def classifier_score_from_log_probs(log_probs):
  """exp(E_x KL(p(y|x) || p(y))) from log-probabilities ``[N, C]`` (rows normalized).

  The marginal is ``log p(y) = logsumexp_x log p(y|x) - log N``; terms with
  p(y|x) = 0 contribute 0 (0 log 0 = 0), also where log p(y) is -inf.
  """
  log_probs = jnp.asarray(log_probs)
  log_marginal = logsumexp(log_probs, axis=0) - math.log(log_probs.shape[0])
  probs = jnp.exp(log_probs)
  terms = jnp.where(probs > 0, probs * (log_probs - log_marginal), 0.0)
  return jnp.exp(jnp.mean(jnp.sum(terms, axis=-1)))


def classifier_score(probs):
  """The inception score's formula exp(E_x KL(p(y|x) || p(y))) on class probabilities.

  Args:
    probs: ``[N, C]`` rows p(y | x_n) of a classifier on N generated images.

  Returns:
    A scalar in [1, C]: 1 when every row is the same, C when the rows are
    one-hot and cover every class equally often.
  """
  return classifier_score_from_log_probs(jnp.log(jnp.asarray(probs)))  # log 0 = -inf: fine


def classifier_score_terms(probs):
  """The two entropies the classifier score is made of, and the samples' class mix.

  ``log score = E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x))``: a score falls
  either because the samples' classes are uneven (the first term: diversity) or
  because each sample is ambiguous to the classifier (the second: confidence).

  Args:
    probs: ``[N, C]`` rows p(y | x_n) of a classifier on N generated images.

  Returns:
    A dict of floats: ``class_entropy`` H(p(y)) (log C at most, for even classes),
    ``conditional_entropy`` E_x H(p(y | x)) (0 for confident samples), and
    ``class_fractions``, the list of the fractions of samples whose most probable
    class is each c.
  """
  probs = np.asarray(probs, np.float64)
  entropy = lambda p: np.sum(scipy.special.entr(p), axis=-1)  # entr(0) = 0
  marginal = probs.mean(axis=0)
  fractions = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
  return {"class_entropy": float(entropy(marginal)),
          "conditional_entropy": float(np.mean(entropy(probs))),
          "class_fractions": [float(f) for f in fractions]}


@functools.partial(jax.jit, static_argnames="per_example")
def rmse(x, x_recon, per_example=False):
  """Root-mean-square reconstruction error, in the units of ``x`` ([0, 1] for images).

  Each example's RMSE is taken over its entries; the default reduction is their
  mean over examples (as the AS-VAE's per-example ``rmse`` metric averaged by the
  loop), not the RMSE of all entries pooled.

  Args:
    x, x_recon: ``[N, ...]`` arrays of the same shape.
    per_example: return the ``[N]`` per-example RMSEs instead of their mean.

  Returns:
    ``mean_n sqrt(mean_i (x_ni - x_recon_ni)^2)``, or the ``[N]`` square roots.
  """
  x, x_recon = jnp.asarray(x), jnp.asarray(x_recon)
  if x.shape != x_recon.shape:
    raise ValueError(f"rmse needs arrays of one shape, got {x.shape} and {x_recon.shape}")
  squared = jnp.square(x - x_recon).reshape(x.shape[0], -1)
  per = jnp.sqrt(jnp.mean(squared, axis=1))
  return per if per_example else jnp.mean(per)


# ----------------------------------------------------------------------------- the classifier

class SmallCNN(nn.Module):
  """Logits of ``[N, H, W, C]`` images: two 3x3 stride-2 convolutions (ReLU), then an MLP.

  Works for 8x8x1 digits, 28x28x1 MNIST and 32x32x3 CIFAR-10 alike.
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, images):
    h = images - 0.5
    for width in self.features:
      h = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME")(h))
    h = nn.relu(nn.Dense(self.hidden)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(h)


def _num_classes(data):
  return int(max(int(np.max(data.labels[s])) for s in ("train", "test")
                 if data.labels[s] is not None and data.labels[s].size)) + 1


def train_classifier(data, key, num_steps, batch_size=DEFAULT_BATCH_SIZE):
  """Fits :class:`SmallCNN` to a data set's labelled train split with Adam (cross-entropy).

  Batches are drawn uniformly with replacement, step i's from the i-th of
  ``num_steps`` keys split from ``key``, so the result is a pure function of the
  data and the key. The steps run as one jitted step called in a Python loop, not
  a ``lax.scan``: XLA:CPU runs these convolutions' gradients about 26x slower
  inside a loop body (0.47 s against 18 ms per step at batch 128 on one core),
  which made a first evaluation on a fresh machine wait 23 minutes for its classifier.

  Args:
    data: a ``dgm_jax.data.registry.Dataset`` of images with labels.
    key: PRNG key (initialization and batches).
    num_steps: Adam steps (learning rate 1e-3).
    batch_size: examples per step.

  Returns:
    ``(params, test_accuracy)``: numpy parameters and the accuracy on the test split.
  """
  if data.labels["train"] is None or len(data.shape) != 3:
    raise ValueError(f"data set {data.name!r} has no labelled images to train a classifier on")
  model = SmallCNN(_num_classes(data))
  x_train = jnp.asarray(data.splits["train"], jnp.float32)
  y_train = jnp.asarray(data.labels["train"], jnp.int32)
  init_key, batch_key = jax.random.split(key)
  params = model.init(init_key, x_train[:1])
  optimizer = optax.adam(_LEARNING_RATE)

  def loss_fn(params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, step_key, x_all, y_all):
    index = jax.random.randint(step_key, (batch_size,), 0, x_all.shape[0])
    grads = jax.grad(loss_fn)(params, x_all[index], y_all[index])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for step_key in jax.random.split(batch_key, num_steps):
    params, opt_state = step(params, opt_state, step_key, x_train, y_train)
  params = jax.device_get(params)
  probs = predict_probs(params, data.splits["test"], model.num_classes)
  return params, accuracy(probs, data.labels["test"])


def predict_probs(params, images, num_classes, chunk_size=500):
  """Class probabilities ``[N, num_classes]`` of :class:`SmallCNN`, in fixed-size chunks."""
  images = np.asarray(images, np.float32)
  apply = _apply_fn(num_classes)
  out = []
  for start in range(0, images.shape[0], chunk_size):
    chunk = images[start:start + chunk_size]
    real = chunk.shape[0]
    if real < chunk_size and images.shape[0] > chunk_size:  # pad: one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - real, axis=0)])
    out.append(np.asarray(apply(params, chunk))[:real])
  return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


_APPLY_FNS = {}


def _apply_fn(num_classes):
  if num_classes not in _APPLY_FNS:
    model = SmallCNN(num_classes)
    _APPLY_FNS[num_classes] = jax.jit(lambda p, x: jax.nn.softmax(model.apply(p, x), axis=-1))
  return _APPLY_FNS[num_classes]


def accuracy(probs, labels):
  """Fraction of rows whose most probable class is the label."""
  return float(np.mean(np.argmax(np.asarray(probs), axis=-1) == np.asarray(labels)))


# ----------------------------------------------------------------------------- cache

def cache_dir():
  """``$DGM_JAX_CACHE_DIR/classifiers``, or ``~/.cache/dgm_jax/classifiers``."""
  root = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                       "dgm_jax")
  return os.path.join(root, "classifiers")


def _cache_name(data, num_steps, batch_size, seed):
  """``<dataset>_<hash>``: the hash covers the train split's bytes and the training settings."""
  digest = hashlib.sha256()
  digest.update(json.dumps(dict(version=_VERSION, name=data.name, shape=list(data.shape),
                                steps=num_steps, batch_size=batch_size, seed=seed,
                                learning_rate=_LEARNING_RATE)).encode())
  digest.update(np.ascontiguousarray(data.splits["train"]).tobytes())
  digest.update(np.ascontiguousarray(data.labels["train"]).tobytes())
  return f"{data.name}_{digest.hexdigest()[:16]}"


def project_classifier(data, num_steps, batch_size=DEFAULT_BATCH_SIZE, seed=0, directory=None):
  """The project's classifier of a data set: loaded from the cache, or trained and cached.

  The parameters go to ``<directory>/<dataset>_<hash>.msgpack`` (flax msgpack)
  and the test accuracy with the settings to the ``.json`` beside it. Every
  run on the same train split with the same settings reuses one classifier.

  Args:
    data: a labelled image ``Dataset``.
    num_steps, batch_size: training settings (part of the cache key).
    seed: the classifier's own seed (not the run's: every run shares it).
    directory: cache folder; :func:`cache_dir` when None.

  Returns:
    ``(probs_fn, info)``: ``probs_fn(images) -> [N, C]`` probabilities and a
    dict with ``name`` (the cache file stem), ``path`` and ``test_accuracy``.
  """
  directory = directory or cache_dir()
  name = _cache_name(data, num_steps, batch_size, seed)
  path = os.path.join(directory, name + ".msgpack")
  num_classes = _num_classes(data)
  params, info = None, None
  if os.path.exists(path):
    try:
      with open(path, "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
      with open(os.path.join(directory, name + ".json")) as f:
        info = json.load(f)
    except (OSError, ValueError) as error:  # damaged or half-written: train again
      params, info = None, None
      warnings.warn(f"ignoring the damaged classifier cache {path} ({error}); training anew")
  if params is None:
    params, test_accuracy = train_classifier(data, jax.random.PRNGKey(seed), num_steps,
                                             batch_size)
    info = dict(dataset=data.name, source=data.source, num_classes=num_classes,
                steps=num_steps, batch_size=batch_size, seed=seed,
                test_accuracy=test_accuracy, version=_VERSION)
    os.makedirs(directory, exist_ok=True)
    _atomic_write(path, flax.serialization.msgpack_serialize(params))
    _atomic_write(os.path.join(directory, name + ".json"),
                  json.dumps(info, indent=2, sort_keys=True).encode())
    # Use what a later run will read, so the first run and the rest score alike.
    params = flax.serialization.msgpack_restore(flax.serialization.msgpack_serialize(params))
  info = dict(info, name=name, path=path)
  return (lambda images: predict_probs(params, images, num_classes)), info


def _atomic_write(path, payload):
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  with os.fdopen(fd, "wb") as f:
    f.write(payload)
  os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- pluggability

class ClassifierSpecError(ValueError):
  """``eval.classifier`` names no usable classifier; the message says what is wrong."""


_SPEC_HELP = ("eval.classifier must be '' (the project's classifier) or 'module.path:function' "
              "naming a function f(dataset_name) that returns probs_fn(images [N, H, W, C] in "
              "[0, 1]) -> [N, C] class probabilities")


def parse_spec(spec):
  """Imports the function a ``'module.path:function'`` spec names (it is not called).

  Raises:
    ClassifierSpecError: (a ValueError) the spec is malformed, the module does
      not import, or the attribute is missing or not callable; the message says which.
  """
  if not isinstance(spec, str) or spec.count(":") != 1:
    raise ClassifierSpecError(f"{_SPEC_HELP}; got {spec!r}")
  module_name, function_name = (part.strip() for part in spec.split(":"))
  if not module_name or not function_name:
    raise ClassifierSpecError(f"{_SPEC_HELP}; got {spec!r}")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ClassifierSpecError(f"eval.classifier={spec!r}: cannot import module "
                              f"{module_name!r} ({error})") from None
  function = getattr(module, function_name, None)
  if function is None or not callable(function):
    raise ClassifierSpecError(f"eval.classifier={spec!r}: module {module_name!r} has no "
                              f"callable {function_name!r}")
  return function


def resolve_classifier(spec, data, *, num_steps, batch_size=DEFAULT_BATCH_SIZE, seed=0,
                       directory=None):
  """The classifier ``eval.classifier`` names, as ``(probs_fn, description)``.

  Args:
    spec: ``''`` for :func:`project_classifier`, or ``'module.path:function'``.
    data: the labelled image ``Dataset`` being scored.
    num_steps, batch_size, seed, directory: settings of the project's classifier.

  Returns:
    ``probs_fn(images) -> [N, C]`` numpy probabilities (a plug-in's output is
    checked: one column per class of ``data``, finite, non-negative, rows summing to
    1) and a string naming the classifier (``'project:<cache name>'`` or the spec).

  Raises:
    ClassifierSpecError: (a ValueError) a bad spec or a plug-in that does not
      return a function; ``probs_fn`` raises it for output that is not probabilities.
  """
  if not spec:
    probs_fn, info = project_classifier(data, num_steps, batch_size, seed, directory)
    return probs_fn, f"project:{info['name']}"
  probs_fn = parse_spec(spec)(data.name)
  if not callable(probs_fn):
    raise ClassifierSpecError(f"eval.classifier={spec!r}: {spec}({data.name!r}) returned "
                              f"{type(probs_fn).__name__}, not a function images -> probabilities")

  num_classes = int(max(np.max(labels) for labels in data.labels.values()
                        if labels is not None)) + 1

  def checked(images):
    probs = np.asarray(probs_fn(images), np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(images):
      raise ClassifierSpecError(f"eval.classifier={spec!r} returned shape {probs.shape} for "
                                f"{len(images)} images; expected [N, num_classes]")
    if probs.shape[1] != num_classes:  # column c must be the data set's class c
      raise ClassifierSpecError(f"eval.classifier={spec!r} returned probabilities of "
                                f"{probs.shape[1]} classes for {data.name}, which has "
                                f"{num_classes}")
    if not (np.all(np.isfinite(probs)) and np.all(probs >= 0)
            and np.allclose(probs.sum(-1), 1.0, atol=1e-3)):
      raise ClassifierSpecError(f"eval.classifier={spec!r} returned rows that are not "
                                "probabilities (finite, non-negative, summing to 1)")
    return probs / probs.sum(-1, keepdims=True)  # float32 rows are off by up to 1e-3

  return checked, spec
