"""The loop's guards through the real launcher: the state after the last update, the train
rows' window, the workdir, a resume under another config, and early stopping's record."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from workdir_helpers import read_metrics

from dgm_jax.train import checkpoint, guards, loop
from dgm_jax.train.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(args, experiment="vae"):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", f"experiments.{experiment}"] + args, cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stderr


def error_line(code, err, *needles):
  assert code != 0
  lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_a_non_finite_state_after_the_last_update_is_neither_saved_nor_evaluated(tmp_path):
  """One step at a learning rate of 100: the step's loss (of the initial state) is finite,
  the state it leaves validates to NaN. It used to be checkpointed, evaluated (NaN NLL in
  results.json) and the run exited 0."""
  code, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                      "--config.train.num_steps=1", "--config.vae.learning_rate=100.0",
                      "--config.vae.lr_schedule=constant"])
  error_line(code, err, "non-finite validation", "at step 1", "no checkpoint was written")
  assert not os.path.exists(tmp_path / "results.json")
  assert not [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]


def test_non_finite_parameters_are_caught_before_their_checkpoint():
  finite = TrainState(step=jnp.asarray(3, jnp.int32), params={"w": jnp.ones((2,))},
                      opt_state={"count": jnp.asarray(3, jnp.int32), "mu": jnp.zeros((2,))})
  assert bool(loop._all_finite(finite))  # pylint: disable=protected-access
  for bad in (finite.replace(params={"w": jnp.array([1.0, jnp.nan])}),
              finite.replace(opt_state={"count": jnp.asarray(3, jnp.int32),
                                        "mu": jnp.array([jnp.inf, 0.0])})):
    assert not bool(loop._all_finite(bad))  # pylint: disable=protected-access


def test_train_rows_average_every_step_since_the_last_row_and_resume_keeps_the_config(tmp_path):
  """With log_every=4 and ckpt_every=3 the row of step 4 is the mean of steps 1-4 (it was
  step 4 alone: the window restarted at the checkpoint of step 3). A second run of the same
  workdir under another seed is refused with the differing key, leaving config.json; a
  longer num_steps resumes."""
  common = ["--config=configs/mnist.py:smoke", "--config.train.eval_every=100",
            "--config.train.num_steps=8"]
  every = tmp_path / "every"
  assert launch(common + [f"--workdir={every}", "--config.train.log_every=1",
                          "--config.train.ckpt_every=8"])[0] == 0
  windowed = tmp_path / "windowed"
  assert launch(common + [f"--workdir={windowed}", "--config.train.log_every=4",
                          "--config.train.ckpt_every=3"])[0] == 0
  per_step = {r["step"]: r["loss"] for r in read_metrics(str(every)) if r["split"] == "train"}
  rows = {r["step"]: r["loss"] for r in read_metrics(str(windowed)) if r["split"] == "train"}
  assert sorted(rows) == [4, 8]
  for step in (4, 8):
    expected = np.mean([per_step[s] for s in range(step - 3, step + 1)])
    np.testing.assert_allclose(rows[step], expected, rtol=1e-5)
  saved = (windowed / "config.json").read_text()
  code, err = launch(common + [f"--workdir={windowed}", "--config.seed=7"])
  error_line(code, err, "was trained under another config", "seed: 0 -> 7")
  assert (windowed / "config.json").read_text() == saved
  code, err = launch(common[:-1] + [f"--workdir={windowed}", "--config.train.num_steps=10"])
  assert code == 0, err[-3000:]
  assert json.loads((windowed / "results.json").read_text())["steps"] == 10


@pytest.mark.parametrize("experiment,config", [("vae", "configs/mnist.py:smoke"),
                                               ("gmm", "configs/gmm.py:smoke")])
def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path, experiment, config):
  path = tmp_path / "a_file"
  path.write_text("not a folder")
  code, err = launch([f"--config={config}", f"--workdir={path}"], experiment)
  error_line(code, err, "cannot be created", str(path))
  code, err = launch([f"--config={config}", f"--workdir={path / 'sub'}"], experiment)
  error_line(code, err, "cannot be created")


def test_check_resumed_config_lists_each_changed_key_and_allows_the_run_length():
  stored = {"seed": 0, "train": {"num_steps": 10, "log_every": 5}, "vae": {"sizes": [2, 3]},
            "eval": {"batch_size": 10}, "data": {"data_dir": "a", "batch_size": 4}}
  same = {"seed": 0, "train": {"num_steps": 20, "log_every": 1}, "vae": {"sizes": (2, 3)},
          "eval": {"batch_size": 50}, "data": {"data_dir": "b", "batch_size": 4}}
  loop.check_resumed_config(stored, same, "w")  # tuples are stored as lists
  changed = dict(same, vae={"sizes": (2, 4), "extra": 1}, data={"data_dir": "b",
                                                                "batch_size": 8})
  with pytest.raises(guards.ConfigError) as raised:
    loop.check_resumed_config(stored, changed, "w")
  message = str(raised.value)
  for needle in ("data.batch_size: 4 -> 8", "vae.extra: '(absent)' -> 1",
                 "vae.sizes: [2, 3] -> [2, 4]"):
    assert needle in message, message
  assert "num_steps" not in message and "eval" not in message


def _state(step):
  return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.ones((2,))},
                    opt_state={})


def test_a_best_record_after_the_resumed_step_is_dropped(tmp_path):
  workdir = str(tmp_path)
  best = loop.BestState(workdir, "nll_nats", True, fresh=True)
  assert best.update(_state(30), 30, {"nll_nats": 90.0})
  best.close()
  kept = loop.BestState(workdir, "nll_nats", True, resumed_step=40)
  assert kept.record == {"step": 30, "value": 90.0}
  kept.close()
  dropped = loop.BestState(workdir, "nll_nats", True, resumed_step=20)
  assert dropped.record is None and not os.path.exists(tmp_path / "best.json")
  assert checkpoint.Checkpointer(workdir, subdir="best").latest_step() is None
  dropped.close()


def test_a_best_json_without_a_step_is_one_config_error(tmp_path):
  (tmp_path / "best.json").write_text(json.dumps({"metric": "nll_nats", "value": 1.0}))
  with pytest.raises(guards.ConfigError, match="names no step"):
    loop.BestState(str(tmp_path), "nll_nats", True, resumed_step=20)


def test_a_misspelled_key_and_a_toy_on_another_data_set_are_clean_error_lines(tmp_path):
  code, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                      "--config.stein_vae.num_particle=3"], "stein_vae")
  line = error_line(code, err, "'num_particle'", 'Did you mean "num_particles"')
  assert "\\" not in line, line  # no escaped quotes or newlines from the KeyError's repr
  code, err = launch(["--config=configs/gmm.py:smoke", f"--workdir={tmp_path}",
                      "--config.data.name=mnsit"], "gmm")
  error_line(code, err, "data.name='mnsit'", "'gmm' toy")


@pytest.mark.parametrize("limit,expected", [(0, 1000), (25, 25), (30, 30), (1, 1)])
def test_limited_eval_batches_mark_exactly_the_first_examples(limit, expected):
  """The test NLL, RMSE and active units read the same first ``eval.max_test_examples``
  images (RMSE and active units used to read the whole split)."""
  from dgm_jax.data import registry  # pylint: disable=import-outside-toplevel
  data = registry.load("digits")
  indices = np.concatenate([np.asarray(batch["index"])[mask] for _, batch, mask in
                            loop.limited_eval_batches(data, "test", 10, limit)])
  np.testing.assert_array_equal(indices, np.arange(min(expected, data.num_examples["test"])))
