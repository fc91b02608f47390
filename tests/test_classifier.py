"""Classifier score and RMSE (section 5.3) against scipy / numpy; the classifier, its cache, plug-ins."""

import dataclasses
import json
import os
import sys

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import strategies as st

from dgm_jax.data import registry
from dgm_jax.eval import classifier

SHAPES = [(1, 2), (3, 2), (5, 3), (8, 10)]


@st.composite
def prob_rows(draw):
  shape = draw(st.sampled_from(SHAPES))
  weights = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
  weights = weights + draw(st.sampled_from([1e-12, 1e-3, 0.5]))  # rows never all zero
  return weights / weights.sum(-1, keepdims=True)


def scipy_score(probs):
  marginal = probs.mean(0)
  return np.exp(np.mean([scipy.stats.entropy(row, marginal) for row in probs]))


@hypothesis.given(prob_rows())
def test_classifier_score_is_exp_mean_kl_and_lies_in_one_to_c(probs):
  score = float(classifier.classifier_score(probs))
  np.testing.assert_allclose(score, scipy_score(probs), rtol=1e-9)
  np.testing.assert_allclose(
      float(classifier.classifier_score_from_log_probs(np.log(probs))), score, rtol=1e-9)
  assert 1.0 - 1e-9 <= score <= probs.shape[1] * (1 + 1e-9)


@hypothesis.given(prob_rows())
def test_score_terms_are_the_entropies_whose_difference_is_the_log_score(probs):
  terms = classifier.classifier_score_terms(probs)
  np.testing.assert_allclose(terms["class_entropy"], scipy.stats.entropy(probs.mean(0)),
                             rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(terms["conditional_entropy"],
                             np.mean([scipy.stats.entropy(row) for row in probs]),
                             rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(terms["class_entropy"] - terms["conditional_entropy"],
                             np.log(scipy_score(probs)), rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(sum(terms["class_fractions"]), 1.0, rtol=1e-12)


def test_score_terms_of_uneven_confident_samples():
  # three samples of class 1, one of class 0, all one-hot; class 2 never predicted
  terms = classifier.classifier_score_terms(np.eye(3)[[1, 0, 1, 1]])
  assert terms["class_fractions"] == [0.25, 0.75, 0.0]
  assert terms["conditional_entropy"] == 0.0
  np.testing.assert_allclose(terms["class_entropy"],
                             -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), rtol=1e-12)


@hypothesis.given(prob_rows(), st.integers(1, 5))
def test_identical_rows_score_one(probs, repeats):
  rows = np.repeat(probs[:1], repeats, axis=0)
  np.testing.assert_allclose(float(classifier.classifier_score(rows)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("num_classes,per_class", [(2, 1), (3, 4), (10, 7)])
def test_one_hot_rows_covering_every_class_equally_score_c(num_classes, per_class):
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(num_classes), per_class))
  probs = np.eye(num_classes)[labels]  # exact zeros: 0 log 0 must count as 0
  np.testing.assert_allclose(float(classifier.classifier_score(probs)), num_classes, rtol=1e-12)
  # Classes never predicted (log p(y) = -inf) do not matter either.
  padded = np.concatenate([probs, np.zeros((len(probs), 2))], axis=1)
  np.testing.assert_allclose(float(classifier.classifier_score(padded)), num_classes, rtol=1e-12)


def test_score_of_two_unequal_one_hot_classes():
  # p(y) = (1/4, 3/4): every row's KL is -log p(its class); IS = exp(H(y)).
  probs = np.eye(2)[[0, 1, 1, 1]]
  expected = np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))
  np.testing.assert_allclose(float(classifier.classifier_score(probs)), expected, rtol=1e-12)


@hypothesis.given(hnp.arrays(np.float64, st.sampled_from([(1, 4), (3, 2, 2, 1), (5, 7)]),
                             elements=st.floats(0, 1)), st.integers(0, 2**31 - 1))
def test_rmse_matches_numpy(x, seed):
  y = np.random.default_rng(seed).uniform(size=x.shape)
  per = np.array([np.sqrt(np.mean((a - b) ** 2)) for a, b in zip(x, y)])
  np.testing.assert_allclose(np.asarray(classifier.rmse(x, y, per_example=True)), per,
                             rtol=1e-12)
  np.testing.assert_allclose(float(classifier.rmse(x, y)), per.mean(), rtol=1e-12)
  assert float(classifier.rmse(x, x)) == 0.0


def test_rmse_rejects_different_shapes():
  with pytest.raises(ValueError, match="one shape"):
    classifier.rmse(np.zeros((2, 3)), np.zeros((2, 4)))


# ----------------------------------------------------------------------------- plug-ins

CONSTANT_ROW = np.array([0.7, 0.2, 0.1] + [0.0] * 7)
FLOAT32_ROW = np.float32([0.7004, 0.2, 0.1] + [0.0] * 7)


def constant_classifier(dataset_name):
  """A plug-in: every image is class 0 with probability 0.7 of the digits' 10 classes."""
  assert dataset_name == "digits"
  return lambda images: np.tile(CONSTANT_ROW, (len(images), 1))


def not_a_classifier(dataset_name):
  del dataset_name
  return 42


def float32_classifier(dataset_name):
  """A plug-in whose float32 rows sum to 1 within 1e-3 only."""
  del dataset_name
  return lambda images: np.tile(FLOAT32_ROW, (len(images), 1))


def bad_probabilities(dataset_name):
  del dataset_name
  return lambda images: np.ones((len(images), 10))


def three_classes(dataset_name):
  """Probabilities over 3 classes for a data set of 10: its argmax would name wrong classes."""
  del dataset_name
  return lambda images: np.tile([0.7, 0.2, 0.1], (len(images), 1))


@pytest.fixture(scope="module")
def digits():
  return registry.load("digits")


def test_plugin_spec_resolves_to_the_named_function(digits):
  probs_fn, name = classifier.resolve_classifier(f"{__name__}:constant_classifier", digits,
                                                 num_steps=1)
  assert name == f"{__name__}:constant_classifier"
  probs = probs_fn(digits.splits["test"][:5])
  np.testing.assert_allclose(probs, np.tile(CONSTANT_ROW, (5, 1)))
  assert classifier.parse_spec(f" {__name__} : constant_classifier ") is constant_classifier


@pytest.mark.parametrize("spec,needle", [
    ("no_colon_here", "module.path:function"),
    ("a:b:c", "module.path:function"),
    (":constant_classifier", "module.path:function"),
    (f"{__name__}:", "module.path:function"),
    ("dgm_jax.no_such_module:f", "cannot import module 'dgm_jax.no_such_module'"),
    (f"{__name__}:no_such_function", "has no callable 'no_such_function'"),
    (f"{__name__}:SHAPES", "has no callable 'SHAPES'"),
    (f"{__name__}:not_a_classifier", "returned int"),
])
def test_bad_spec_is_a_value_error_naming_the_problem(digits, spec, needle):
  with pytest.raises(ValueError, match="eval.classifier") as info:
    classifier.resolve_classifier(spec, digits, num_steps=1)
  assert needle in str(info.value)
  assert isinstance(info.value, classifier.ClassifierSpecError)


def test_plugin_rows_within_the_tolerance_are_renormalized(digits):
  probs_fn, _ = classifier.resolve_classifier(f"{__name__}:float32_classifier", digits,
                                              num_steps=1)
  probs = probs_fn(digits.splits["test"][:4])
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-15)
  np.testing.assert_allclose(probs[0], FLOAT32_ROW / np.float32(1.0004),
                             rtol=1e-6)


def test_plugin_with_another_number_of_classes_is_reported(digits):
  probs_fn, _ = classifier.resolve_classifier(f"{__name__}:three_classes", digits, num_steps=1)
  with pytest.raises(classifier.ClassifierSpecError, match="3 classes for digits, which has 10"):
    probs_fn(digits.splits["test"][:4])


def test_plugin_output_that_is_not_probabilities_is_reported(digits):
  probs_fn, _ = classifier.resolve_classifier(f"{__name__}:bad_probabilities", digits,
                                              num_steps=1)
  with pytest.raises(classifier.ClassifierSpecError, match="not probabilities"):
    probs_fn(digits.splits["test"][:4])


# ----------------------------------------------------------------------------- project classifier

def test_train_classifier_learns_digits(digits):
  import jax
  params, test_accuracy = classifier.train_classifier(digits, jax.random.PRNGKey(0), 200, 64)
  assert test_accuracy > 0.9, test_accuracy  # chance is 0.1
  probs = classifier.predict_probs(params, digits.splits["test"], 10)
  assert probs.shape == (250, 10)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert classifier.accuracy(probs, digits.labels["test"]) == test_accuracy


def test_predict_probs_in_padded_chunks_equals_one_pass():
  """10 images in chunks of 4: the last chunk holds 2 images padded to 4, whose first 2 rows
  are kept."""
  import jax
  images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (10, 8, 8, 1)), np.float32)
  params = classifier.SmallCNN(10).init(jax.random.PRNGKey(0), images[:1])
  whole = classifier.predict_probs(params, images, 10, chunk_size=10)
  chunked = classifier.predict_probs(params, images, 10, chunk_size=4)
  assert chunked.shape == (10, 10)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-7)
  assert not np.allclose(whole[8], whole[9])  # the kept rows matter: two different images


def test_project_classifier_is_cached_and_reused(digits, tmp_path, monkeypatch):
  monkeypatch.setenv(classifier.CACHE_DIR_ENV, str(tmp_path))
  probs_fn, name = classifier.resolve_classifier("", digits, num_steps=30)
  folder = tmp_path / "classifiers"
  stem = name.split(":", 1)[1]
  assert name.startswith("project:digits_")
  assert sorted(os.listdir(folder)) == [stem + ".json", stem + ".msgpack"]
  info = json.loads((folder / (stem + ".json")).read_text())
  assert info["steps"] == 30 and 0.0 <= info["test_accuracy"] <= 1.0
  first = probs_fn(digits.splits["test"])

  # A second resolution must read the cache, not train: make training fail.
  def no_training(*args, **kwargs):
    raise AssertionError("trained although a cached classifier exists")

  monkeypatch.setattr(classifier, "train_classifier", no_training)
  again, name_again = classifier.resolve_classifier("", digits, num_steps=30)
  assert name_again == name
  np.testing.assert_array_equal(again(digits.splits["test"]), first)
  assert classifier.accuracy(first, digits.labels["test"]) == info["test_accuracy"]
  # Other training settings are another classifier.
  with pytest.raises(AssertionError, match="trained although"):
    classifier.resolve_classifier("", digits, num_steps=31)
  # So are other labels of the same images (a relabelled or shuffled-label split).
  relabelled = dataclasses.replace(
      digits, labels=dict(digits.labels, train=((digits.labels["train"] + 1) % 10).astype(np.int32)))
  with pytest.raises(AssertionError, match="trained although"):
    classifier.resolve_classifier("", relabelled, num_steps=30)


# ----------------------------------------------------------------------------- the loop

def _run_smoke_vae_on_digits(tmp_path, monkeypatch, num_score_samples):
  """results of a 10-step VAE run on the digits, with its classifier cache in tmp_path."""
  from configs import mnist  # pylint: disable=import-outside-toplevel
  from dgm_jax.train import loop  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv(classifier.CACHE_DIR_ENV, str(tmp_path / "cache"))
  config = mnist.get_config("smoke")
  config.data.name = "digits"
  config.train.update(num_steps=10, eval_every=10, ckpt_every=10, log_every=10,
                      tensorboard=False)
  config.eval.update(num_score_samples=num_score_samples)
  return loop.run(config, str(tmp_path / "run"), "vae")


@pytest.mark.slow
def test_loop_writes_sample_scores_to_results(tmp_path, monkeypatch):
  results = _run_smoke_vae_on_digits(tmp_path, monkeypatch, num_score_samples=40)
  on_disk = json.load(open(tmp_path / "run" / "results.json"))
  for key in ("rmse", "classifier_score", "classifier_accuracy", "classifier"):
    assert on_disk[key] == results[key], key
  assert 0 < results["rmse"] < 1
  assert 1 <= results["classifier_score"] <= 10
  assert 0 <= results["classifier_accuracy"] <= 1
  assert results["classifier"].startswith("project:digits_")
  assert results["num_score_samples"] == 40
  # the score's terms, consistent with it (log score = H(p(y)) - E H(p(y|x)))
  np.testing.assert_allclose(
      on_disk["sample_class_entropy"] - on_disk["sample_conditional_entropy"],
      np.log(on_disk["classifier_score"]), rtol=1e-4, atol=1e-5)
  assert len(on_disk["sample_class_fractions"]) == 10
  np.testing.assert_allclose(sum(on_disk["sample_class_fractions"]), 1.0, rtol=1e-9)


@pytest.mark.slow
def test_loop_resolves_a_plugin_once_before_training_and_scores_with_it(tmp_path, monkeypatch):
  """A plug-in is built and tried before the first step (``_Trainer._check_plugin_classifier``)
  and that same function scores the samples: its factory runs once, before any checkpoint."""
  from dgm_jax.train import loop  # pylint: disable=import-outside-toplevel
  calls = []

  def counted(dataset_name):
    calls.append(os.listdir(tmp_path / "run" / "checkpoints")
                 if (tmp_path / "run" / "checkpoints").exists() else [])
    return constant_classifier(dataset_name)

  monkeypatch.setattr(sys.modules[__name__], "counted_plugin", counted, raising=False)
  monkeypatch.setattr(loop._Trainer, "_resolve_classifier", _no_project_classifier(
      loop._Trainer._resolve_classifier), raising=True)
  from configs import mnist  # pylint: disable=import-outside-toplevel
  config = mnist.get_config("smoke")
  config.data.name = "digits"
  config.train.update(num_steps=10, eval_every=10, ckpt_every=10, log_every=10,
                      tensorboard=False)
  config.eval.update(num_score_samples=40, classifier=f"{__name__}:counted_plugin")
  results = loop.run(config, str(tmp_path / "run"), "vae")
  assert calls == [[]]  # once, with no checkpoint written yet
  assert results["classifier"] == f"{__name__}:counted_plugin"
  labels = np.asarray(registry.load("digits").labels["test"])
  assert results["classifier_accuracy"] == pytest.approx(np.mean(labels == 0), abs=1e-12)
  np.testing.assert_allclose(results["sample_class_fractions"], [1.0] + [0.0] * 9)


def _no_project_classifier(resolve):
  """``_Trainer._resolve_classifier`` that fails if asked for the project's classifier."""
  def wrapped(self):
    assert self.config.eval.classifier, "resolved the project's classifier"
    return resolve(self)
  return wrapped


@pytest.mark.slow
def test_loop_without_score_samples_trains_no_classifier(tmp_path, monkeypatch):
  """``eval.num_score_samples=0`` skips the score, and with it the classifier's training
  (a fresh machine's first evaluation would otherwise train one)."""
  def no_training(*args, **kwargs):
    raise AssertionError("trained a classifier for a run that scores no samples")

  monkeypatch.setattr(classifier, "train_classifier", no_training)
  results = _run_smoke_vae_on_digits(tmp_path, monkeypatch, num_score_samples=0)
  assert "classifier_score" not in results and "classifier" not in results
  assert 0 < results["rmse"] < 1  # the other section-5.3 score is still there
  assert not (tmp_path / "cache").exists()
