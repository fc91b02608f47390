"""Early stopping (section 4.5): the test split sees the state that validated best."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from workdir_helpers import read_metrics

from configs import mnist
from dgm_jax.train import config_check, guards, loop, runs
from dgm_jax.train.state import TrainState

NUM_STEPS, EVAL_EVERY = 20, 5


def smoke_config(variant="smoke", **train):
  config = mnist.get_config(variant)
  config.data.name = "digits"  # bundled with scikit-learn: no data set needed
  config.train.update({**dict(num_steps=NUM_STEPS, eval_every=EVAL_EVERY, ckpt_every=EVAL_EVERY,
                              log_every=EVAL_EVERY, tensorboard=False), **train})
  config.eval.update(num_score_samples=0)
  # A constant rate, so that the state at step s is the same whatever num_steps is.
  for section in (config.vae, config.stein_vae):
    section.update(lr_schedule="constant", final_lr_fraction=1.0)
  return config


def valid_rows(workdir):
  return [r for r in read_metrics(workdir) if r["split"] == "valid"]


@pytest.mark.parametrize("method,metric,lower_is_better", [
    ("vae", "nll_nats", False), ("stein_vae", "elbo_nats", True)])
def test_the_test_split_sees_the_state_of_the_selected_step(tmp_path, monkeypatch, method,
                                                            metric, lower_is_better):
  """The direction is flipped so that an early, worse state is chosen rather than the final
  one; its test figures must equal those of a run trained for exactly that many steps."""
  monkeypatch.setitem(config_check.EARLY_STOPPING_METRICS, metric, lower_is_better)
  stopped = str(tmp_path / "stopped")
  results = loop.run(smoke_config(early_stopping=metric), stopped, method)
  values = {r["step"]: r[metric] for r in valid_rows(stopped)}
  assert sorted(values) == list(range(EVAL_EVERY, NUM_STEPS + 1, EVAL_EVERY))
  sign = 1.0 if lower_is_better else -1.0
  best_step = min(values, key=lambda s: (sign * values[s], s))  # the first of equal values
  assert best_step < NUM_STEPS, values  # otherwise the test shows nothing
  assert results["early_stopping"] == {"metric": metric, "step": best_step,
                                       "valid_value": values[best_step]}
  assert results["steps"] == NUM_STEPS
  with open(os.path.join(stopped, "best.json")) as f:
    assert json.load(f) == {"metric": metric, "step": best_step, "value": values[best_step],
                            "settings": dict(
                                valid_examples=64, **{"eval.binarization_seed": 0},
                                **({"eval.valid_importance_samples": 8}
                                   if metric == "nll_nats" else {}))}

  short = str(tmp_path / "short")
  reference = loop.run(smoke_config(num_steps=best_step), short, method)
  for key in ("nll_nats", "elbo_nats", "rmse", "active_units"):
    np.testing.assert_allclose(results[key], reference[key], rtol=1e-6, err_msg=key)
  test_rows = [r for r in read_metrics(stopped) if r["split"] == "test"]
  assert [r["step"] for r in test_rows] == [best_step]
  # Tools that reopen the run (experiments.decoder_nll, compare_reconstructions) get that state.
  assert int(runs.load_run(stopped).state.step) == best_step
  assert int(runs.load_run(stopped, step=NUM_STEPS).state.step) == NUM_STEPS


def test_a_resumed_run_goes_on_comparing_with_the_best_so_far(tmp_path, monkeypatch):
  """Higher NLL counts as better here, so the best state comes before the resume point: a
  resumed run that forgot it would pick a later one."""
  monkeypatch.setitem(config_check.EARLY_STOPPING_METRICS, "nll_nats", False)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.run(smoke_config(early_stopping="nll_nats"), straight, "vae")
  loop.run(smoke_config(early_stopping="nll_nats", num_steps=10), resumed, "vae")
  results = loop.run(smoke_config(early_stopping="nll_nats"), resumed, "vae")
  values = {r["step"]: r["nll_nats"] for r in valid_rows(straight)}
  best = min(values, key=lambda s: (-values[s], s))
  assert best <= 10, values  # before the resume point, or the test shows nothing
  with open(os.path.join(straight, "best.json")) as f, open(
      os.path.join(resumed, "best.json")) as g:
    assert json.load(f) == json.load(g) == {
        "metric": "nll_nats", "step": best, "value": values[best],
        "settings": {"eval.valid_importance_samples": 8, "valid_examples": 64,
                     "eval.binarization_seed": 0}}
  assert results["early_stopping"]["step"] == best


def test_a_resume_that_validates_differently_is_refused_before_it_changes_anything(tmp_path):
  """A best value from K = 8 draws and a later one from K = 64 do not compare (the bound
  rises with K), nor values over other examples: such a resume stops with one error, the
  workdir as it was. Test-only evaluation keys may still change."""
  workdir = str(tmp_path / "run")
  loop.run(smoke_config(early_stopping="nll_nats", num_steps=10), workdir, "vae")
  before = {name: open(os.path.join(workdir, name)).read()
            for name in ("best.json", "metrics.jsonl", "config.json")}
  for key, value, needle in (("valid_importance_samples", 64,
                              "eval.valid_importance_samples=8 (now 64)"),
                             ("max_valid_examples", 40, "valid_examples=64 (now 40)")):
    config = smoke_config(early_stopping="nll_nats")
    config.eval[key] = value
    with pytest.raises(guards.ConfigError, match="values measured differently") as info:
      loop.run(config, workdir, "vae")
    assert needle in str(info.value)
    for name, text in before.items():
      assert open(os.path.join(workdir, name)).read() == text, name
  config = smoke_config(early_stopping="nll_nats")
  config.eval.update(num_importance_samples=16, max_test_examples=50)  # the test split's
  results = loop.run(config, workdir, "vae")
  assert results["steps"] == NUM_STEPS and results["num_examples_evaluated"] == 50


def test_validation_settings_are_those_the_metric_depends_on():
  """K only for the NLL (the ELBO and the error rate do not draw K samples); the number of
  examples evaluated, not the limit (a limit past the split's size evaluates all of it)."""
  config = smoke_config()
  config.eval.update(max_valid_examples=300, valid_importance_samples=8)
  nll = loop.validation_settings(config, "nll_nats", 250)
  assert nll == {"valid_examples": 250, "eval.binarization_seed": 0,
                 "eval.valid_importance_samples": 8}
  config.eval.max_valid_examples = 0  # all of them: the same examples
  assert loop.validation_settings(config, "nll_nats", 250) == nll
  for metric in ("elbo_nats", "error_rate"):
    assert loop.validation_settings(config, metric, 250) == {"valid_examples": 250,
                                                             "eval.binarization_seed": 0}
  config.eval.max_valid_examples = 64
  assert loop.validation_settings(config, "elbo_nats", 250)["valid_examples"] == 64


def test_a_record_that_does_not_match_its_state_is_dropped_before_its_settings_are_checked(
    tmp_path):
  """best.json naming a step best/ does not hold is cleared anyway: a change of validation
  settings is then no reason to stop."""
  best = loop.BestState(str(tmp_path), "nll_nats", True, settings={"valid_examples": 64})
  assert best.update(_state(5), 5, {"nll_nats": 90.0})
  best.close()
  with open(tmp_path / "best.json", "w") as f:
    json.dump({"metric": "nll_nats", "step": 4, "value": 95.0,
               "settings": {"valid_examples": 64}}, f)
  again = loop.BestState(str(tmp_path), "nll_nats", True, settings={"valid_examples": 40})
  assert again.record is None
  assert again.update(_state(5), 5, {"nll_nats": 91.0})  # a consistent record, settings 40
  again.close()
  kept = loop.BestState(str(tmp_path), "nll_nats", True, settings={"valid_examples": 40})
  assert kept.record == {"step": 5, "value": 91.0}
  kept.close()
  with pytest.raises(guards.ConfigError, match=r"valid_examples=40 \(now 64\)"):
    loop.BestState(str(tmp_path), "nll_nats", True, settings={"valid_examples": 64})


def test_a_run_from_step_zero_forgets_an_old_best_state(tmp_path):
  """A workdir whose checkpoints were removed starts over: its old best must not win."""
  workdir = str(tmp_path / "run")
  best = loop.BestState(workdir, "nll_nats", lower_is_better=True)
  assert best.update(_state(3), 3, {"nll_nats": -1e9})  # unbeatable
  best.close()
  results = loop.run(smoke_config(early_stopping="nll_nats"), workdir, "vae")
  assert results["early_stopping"]["step"] != 3
  assert results["early_stopping"]["valid_value"] > -1e9


def test_a_record_without_its_checkpoint_is_dropped(tmp_path):
  best = loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  assert best.update(_state(5), 5, {"nll_nats": 90.0})
  best.close()
  with open(tmp_path / "best.json", "w") as f:  # as if killed between the two writes
    json.dump({"metric": "nll_nats", "step": 4, "value": 95.0}, f)
  again = loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  assert again.record is None
  again.close()
  # The resumed run's own state at step 5 (a resume may change the learning rate) is kept,
  # not the orphan the killed run left at that step.
  kept = loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  assert kept.update(_state(5, 2.0), 5, {"nll_nats": 90.0})
  kept.close()
  read = loop.BestState(str(tmp_path), "nll_nats", True)
  assert read.record == {"step": 5, "value": 90.0}
  np.testing.assert_array_equal(read.restore(_state(5)).params["w"], 2.0)
  read.close()


def test_a_state_without_any_record_is_dropped(tmp_path):
  """Killed after saving its first best state and before best.json: the resumed run's own
  state at that step is kept, not the orphan."""
  best = loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  assert best.update(_state(5), 5, {"nll_nats": 90.0})
  best.close()
  os.remove(tmp_path / "best.json")
  again = loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  assert again.record is None and again.update(_state(5, 3.0), 5, {"nll_nats": 91.0})
  again.close()
  read = loop.BestState(str(tmp_path), "nll_nats", True)
  assert read.record == {"step": 5, "value": 91.0}
  np.testing.assert_array_equal(read.restore(_state(5)).params["w"], 3.0)
  read.close()


def _state(step, w=1.0):
  return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.full(3, w)},
                    opt_state={})


@pytest.mark.parametrize("variant,train,evaluation,needle", [
    ("smoke", {"early_stopping": "accuracy"}, {}, "train.early_stopping='accuracy' is not one of"),
    ("smoke", {"early_stopping": "nll_nats"}, {"valid_importance_samples": 0},
     "needs eval.valid_importance_samples > 0"),
    ("smoke", {"early_stopping": "error_rate"}, {}, "needs a semi-supervised run"),
])
def test_bad_early_stopping_settings_stop_before_training(tmp_path, variant, train, evaluation,
                                                          needle):
  config = smoke_config(variant, **train)
  config.eval.update(evaluation)
  with pytest.raises(guards.ConfigError, match=needle):
    loop.run(config, str(tmp_path / "run"), "vae")
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_best_state_never_takes_a_nan_and_keeps_the_first_of_equal_values(tmp_path):
  best = loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  assert not best.improves(float("nan"))
  assert best.improves(90.0)
  best.record = {"step": 5, "value": 90.0}
  assert not best.improves(90.0) and best.improves(89.9) and not best.improves(90.1)
  best.close()


def test_a_workdir_kept_by_one_metric_refuses_another(tmp_path):
  best = loop.BestState(str(tmp_path), "error_rate", lower_is_better=True)
  assert best.update(_state(5), 5, {"error_rate": 0.1})
  best.close()
  with pytest.raises(guards.ConfigError, match="kept its best state by 'error_rate'"):
    loop.BestState(str(tmp_path), "nll_nats", lower_is_better=True)
  again = loop.BestState(str(tmp_path), "error_rate", lower_is_better=True)
  assert again.record == {"step": 5, "value": 0.1}
  again.close()
