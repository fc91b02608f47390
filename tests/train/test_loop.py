"""The training loop through the real launcher: smoke, resume after SIGKILL, errors, sharding."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from workdir_helpers import checkpoint_params, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launcher_env(**extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update({"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}, **extra)
  return env


def launch(args, env=None, wait=True, timeout=600, experiment="vae"):
  cmd = [sys.executable, "-m", f"experiments.{experiment}"] + args
  proc = subprocess.Popen(cmd, cwd=REPO, env=env or launcher_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


@pytest.mark.parametrize("experiment,variant", [("vae", "smoke"), ("vae", "smoke,iwae"),
                                                ("stein_vae", "smoke"), ("stein_vae", "smoke,viwae"),
                                                ("vae", "smoke,semi"), ("stein_vae", "smoke,semi"),
                                                ("vae", "smoke,semi,cnn")])
def test_smoke_run_writes_the_workdir_contract(tmp_path, experiment, variant):
  workdir = str(tmp_path / "run")
  code, _, err = launch([f"--config=configs/mnist.py:{variant}", f"--workdir={workdir}"],
                        experiment=experiment)
  assert code == 0, err[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  for key in ("method", "dataset", "data_source", "num_examples", "steps", "wall_s", "nll_nats",
              "nll_num_samples", "elbo_nats", "active_units"):
    assert key in results, key
  assert results["steps"] == 20 and results["method"] == experiment
  if "semi" in variant:  # the test error of argmax_y p(y | z), over the whole test split
    num_test = results["num_examples"]["test"]
    assert results["num_examples_evaluated"] == num_test
    errors = results["error_rate"] * num_test  # a count of misclassified test images
    assert 0 <= errors <= num_test and abs(errors - round(errors)) < 1e-6, errors
  assert np.isfinite(results["nll_nats"]) and results["nll_nats"] > 0
  # The importance-sampled bound is at least as tight as the ELBO.
  assert -results["nll_nats"] >= results["elbo_nats"] - 1.0
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["data"]["name"] == "mnist"
  rows = read_metrics(workdir)
  assert {r["split"] for r in rows} == {"train", "valid", "test"}
  assert [r["step"] for r in rows if r["split"] == "train"] == [5, 10, 15, 20]
  samples = os.listdir(os.path.join(workdir, "samples"))
  assert any(s.startswith("samples_") and s.endswith(".png") for s in samples)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  if variant == "smoke":  # the finished run under both proposals (experiments.decoder_nll)
    code, out, err = launch([f"--workdir={workdir}", "--num_examples=12", "--num_samples=16",
                             "--shape_examples=5", "--shape_samples=64"],
                            experiment="decoder_nll")
    assert code == 0, err[-3000:]
    written = json.load(open(os.path.join(workdir, "decoder_nll.json")))
    assert json.loads(out.strip().splitlines()[-1]) == written
    assert written["num_examples_evaluated"] == 12 and written["steps"] == 20
    assert written["method"] == results["variant"]
    for key in ("nll_nats", "nll_laplace_nats", "nll_standard_error_nats"):
      assert np.isfinite(written[key]) and written[key] > 0, written
    assert written["split"] == "test"
    # The per-image NLLs behind the means.
    per_image = dict(np.load(os.path.join(workdir, "decoder_nll_per_image.npz")))
    assert per_image["own"].shape == per_image["laplace"].shape == (12,)
    assert np.mean(per_image["own"]) == pytest.approx(written["nll_nats"], rel=1e-12)
    assert np.mean(per_image["laplace"]) == pytest.approx(written["nll_laplace_nats"], rel=1e-12)
    shape = written["posterior_shape"]  # medians over 5 images of eval.posterior_shape
    assert all(np.isfinite(v) for v in shape.values()), shape
    assert 0 < shape["whitened_var_min"] <= shape["whitened_var_median"] <= shape[
        "whitened_var_max"], shape
    assert shape["kl_gaussian"] > 0 and shape["mahalanobis_sq"] >= 0, shape
    code, _, err = launch([f"--workdir={workdir}", "--num_examples=4", "--num_samples=8",
                           "--split=train"], experiment="decoder_nll")
    assert code == 0, err[-3000:]
    train = json.load(open(os.path.join(workdir, "decoder_nll_train.json")))
    assert train["split"] == "train" and train["num_examples_evaluated"] == 4
    assert json.load(open(os.path.join(workdir, "decoder_nll.json"))) == written  # kept
    # Paired: a run against itself sees the same images and keys, so every difference is 0.
    code, out, err = launch([f"--workdir={workdir}", f"--workdir={workdir}", "--num_examples=6",
                             "--num_samples=16", "--shape_examples=0"], experiment="decoder_nll")
    assert code == 0, err[-3000:]
    # A later call draws the same keys: its per-image NLLs are the first call's first 6.
    later = np.load(os.path.join(workdir, "decoder_nll_per_image.npz"))
    for name in ("own", "laplace"):
      np.testing.assert_array_equal(later[name], per_image[name][:6])
    first, second = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert "paired_with_first" not in first
    paired = second["paired_with_first"]
    assert paired["workdir"] == workdir and paired["num_examples"] == 6
    for key in ("nll_difference_nats", "standard_error_nats", "nll_laplace_difference_nats",
                "laplace_standard_error_nats"):
      assert paired[key] == 0.0, paired
    if experiment == "vae":
      assert_decoder_nll_refuses_bad_arguments(workdir, config, tmp_path)
      code, _, err = launch([f"--workdir={workdir}"], experiment="density_check")
      assert_one_line_error(code, err, "method 'vae'", "Stein VAE or VIWAE run")
    else:  # is the encoder's change-of-variables density its codes' (experiments.density_check)
      code, out, err = launch([f"--workdir={workdir}", "--num_examples=3", "--num_samples=64"],
                              experiment="density_check")
      assert code == 0, err[-3000:]
      written = json.load(open(os.path.join(workdir, "density_check.json")))
      assert json.loads(out.strip().splitlines()[-1]) == written
      assert written["num_examples"] == 3 and written["steps"] == 20
      assert 0.0 <= written["minority_sign_fraction"] <= 0.5
      assert 0 <= written["images_with_both_signs"] <= 3
      assert np.isfinite(written["log_ratio_mean"]) and written["log_ratio_standard_error"] >= 0


def assert_decoder_nll_refuses_bad_arguments(workdir, config, tmp_path):
  """``experiments.decoder_nll``'s argument and workdir checks, each one error line. They do
  not depend on the method, so they run on the VAE's smoke run only (a process each)."""
  code, _, err = launch([f"--workdir={workdir}", "--num_examples=2", "--shape_samples=8"],
                        experiment="decoder_nll")  # no more draws of q than latent dims
  assert_one_line_error(code, err, "--shape_samples=8", "latent dimension")
  other = tmp_path / "other_binarization"  # only a config: the check runs before any restore
  other.mkdir()
  config["eval"]["binarization_seed"] = 1
  json.dump(config, open(other / "config.json", "w"))
  code, _, err = launch([f"--workdir={workdir}", f"--workdir={other}", "--num_examples=6"],
                        experiment="decoder_nll")
  assert_one_line_error(code, err, "binarization_seed=1", "paired")
  code, _, err = launch([f"--workdir={workdir}", f"--workdir={workdir}", "--num_examples=1"],
                        experiment="decoder_nll")
  assert_one_line_error(code, err, "--num_examples=1", "at least 2")
  code, _, err = launch([f"--workdir={workdir}", "--num_samples=0"], experiment="decoder_nll")
  assert_one_line_error(code, err, "num_samples")
  # A checkpoint that does not fit the workdir's config.json (edited after the run).
  shutil.copytree(os.path.join(workdir, "checkpoints"), other / "checkpoints")
  config["eval"]["binarization_seed"] = 0
  config[config["method"]]["latent_dim"] = 3
  json.dump(config, open(other / "config.json", "w"))
  code, _, err = launch([f"--workdir={other}", "--num_examples=2"], experiment="decoder_nll")
  assert_one_line_error(code, err, "checkpoint at step 20", "does not fit the config")


RESUME_ARGS = ["--config.train.num_steps=600",
               "--config.train.ckpt_every=100", "--config.train.eval_every=300",
               "--config.train.log_every=50"]


# ALI (experiments.ali) shares the AS-VAE's module and state layout; its own resume run was
# left out to keep the suite under 25 minutes on 2 cores.
@pytest.mark.parametrize("experiment,variant", [("vae", "smoke"), ("stein_vae", "smoke"),
                                                ("asvae", "smoke"), ("vae", "smoke,semi")])
def test_sigkill_and_restart_ends_like_an_uninterrupted_run(tmp_path, experiment, variant):
  """Also for a semi-supervised run, whose labeled batches come from their own stream."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  args = [f"--config=configs/mnist.py:{variant}"] + RESUME_ARGS
  code, _, err = launch(args + [f"--workdir={straight}"], experiment=experiment)
  assert code == 0, err[-3000:]

  proc = launch(args + [f"--workdir={resumed}"], wait=False, experiment=experiment)
  first_ckpt = os.path.join(resumed, "checkpoints", "100")
  deadline = time.time() + 240
  while not os.path.exists(first_ckpt) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not os.path.exists(os.path.join(resumed, "results.json"))
  # Rows a killed run may leave past its newest checkpoint, and a test row of an earlier
  # final evaluation: the resumed run must drop both (compared with the straight run below).
  latest = max(int(s) for s in os.listdir(os.path.join(resumed, "checkpoints")) if s.isdigit())
  with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": latest + 1, "split": "train", "loss": -1.0}) + "\n")
    f.write(json.dumps({"step": latest, "split": "test", "loss": -1.0}) + "\n")

  code, _, err = launch(args + [f"--workdir={resumed}"], experiment=experiment)
  assert code == 0, err[-3000:]
  assert "Resuming from the checkpoint" in err
  a, b = checkpoint_params(straight, 600), checkpoint_params(resumed, 600)
  for x, y in zip(*(map(np.asarray, __import__("jax").tree_util.tree_leaves(t)) for t in (a, b))):
    np.testing.assert_array_equal(x, y)
  assert read_metrics(straight) == read_metrics(resumed)
  ra, rb = (json.load(open(os.path.join(w, "results.json"))) for w in (straight, resumed))
  # The training time goes on across the restart: wall_s counts both processes.
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    seconds = [row["train_seconds"] for row in map(json.loads, f) if row["split"] == "train"]
  assert all(b > a for a, b in zip(seconds, seconds[1:])), seconds
  assert rb["wall_s"] >= seconds[-1] > 0
  assert set(ra) == set(rb)
  for key in set(ra) - {"wall_s", "eval_wall_s"}:
    assert ra[key] == rb[key], key


def assert_one_line_error(code, err, *needles):
  assert code != 0
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_decoder_nll_of_a_workdir_without_a_run_is_one_error_line(tmp_path):
  code, _, err = launch([f"--workdir={tmp_path / 'missing'}"], experiment="decoder_nll")
  assert_one_line_error(code, err, "config.json")


def test_rerun_of_a_finished_workdir_and_a_config_that_does_not_fit_it(tmp_path):
  """The same command again on a finished workdir evaluates again: metrics.jsonl keeps one
  test row, equal to the first. Another config (here one whose shapes do not fit the
  checkpoint either) stops with one error line naming the key, and leaves config.json and
  metrics.jsonl as they were."""
  workdir = str(tmp_path / "run")
  args = ["--config=configs/mnist.py:smoke", f"--workdir={workdir}"]
  assert launch(args)[0] == 0
  first = read_metrics(workdir)
  assert [r["split"] for r in first].count("test") == 1
  code, _, err = launch(args)
  assert code == 0, err[-3000:]
  assert read_metrics(workdir) == first
  saved = {name: open(os.path.join(workdir, name)).read()
           for name in ("config.json", "metrics.jsonl")}
  code, _, err = launch(args + ["--config.vae.latent_dim=3"])
  assert_one_line_error(code, err, "was trained under another config", "vae.latent_dim: 50 -> 3")
  for name, text in saved.items():
    assert open(os.path.join(workdir, name)).read() == text, name


@pytest.mark.parametrize("config_arg,needles", [
    ("configs/nope.py", ("could not load --config", "configs/nope.py")),
    ("configs/mnist.py:bogus", ("unknown config argument 'bogus'",)),
    ("configs/mnist.py:cnn", ("'cnn' goes with 'semi'",))])
def test_config_file_or_argument_that_fails_to_load(tmp_path, config_arg, needles):
  code, _, err = launch([f"--config={config_arg}", f"--workdir={tmp_path}"])
  assert_one_line_error(code, err, *needles)
  assert not os.listdir(tmp_path)


def test_override_of_the_wrong_type(tmp_path):
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                         "--config.train.num_steps=abc"])
  assert_one_line_error(code, err, "--config.train.num_steps=abc", "invalid literal")


def test_unknown_config_key(tmp_path):
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                         "--config.vae.no_such_key=3"])
  assert_one_line_error(code, err, "no_such_key", "existing key")
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_unknown_dataset(tmp_path):
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                         "--config.data.name=imagenet64"])
  assert_one_line_error(code, err, "imagenet64", "mnist")


def test_unimportable_classifier_plugin(tmp_path):
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                         "--config.eval.classifier=no_such_module:probs"])
  assert_one_line_error(code, err, "no_such_module", "cannot import")
  assert not os.path.exists(tmp_path / "metrics.jsonl")


_PLUGINS = """
import numpy as np

def fails_on_the_data_set(name):
  raise KeyError(f"no weights for {name}")

def wrong_shape(name):
  return lambda images: np.full((len(images), 5, 2), 0.1)
"""


@pytest.mark.parametrize("function,needles", [
    ("fails_on_the_data_set", ("failed on two mnist test images before training",
                               "KeyError", "no weights for mnist", "my_plugins.py:5)")),
    ("wrong_shape", ("returned shape (2, 5, 2) for 2 images",))])
def test_classifier_plugin_that_imports_but_fails_stops_before_training(tmp_path, function,
                                                                         needles):
  """A plug-in that imports (config_check's test) but fails once called is tried on two test
  images before training: one error line, no training row."""
  (tmp_path / "my_plugins.py").write_text(_PLUGINS)
  env = launcher_env(PYTHONPATH=os.pathsep.join([REPO, str(tmp_path)]))
  workdir = tmp_path / "run"
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={workdir}",
                         f"--config.eval.classifier=my_plugins:{function}"], env=env)
  assert_one_line_error(code, err, *needles)
  assert not os.path.exists(workdir / "metrics.jsonl")
  assert not os.path.exists(workdir / "checkpoints") or not os.listdir(workdir / "checkpoints")


def test_truncated_data_file(tmp_path):
  data_dir = tmp_path / "data" / "mnist"
  data_dir.mkdir(parents=True)
  header = np.array([0x00000803, 60000, 28, 28], dtype=">u4").tobytes()
  with gzip.open(data_dir / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write(header + bytes(1000))
  for name, magic, dims in (("train-labels-idx1-ubyte.gz", 0x801, [60000]),
                            ("t10k-images-idx3-ubyte.gz", 0x803, [10000, 28, 28]),
                            ("t10k-labels-idx1-ubyte.gz", 0x801, [10000])):
    with gzip.open(data_dir / name, "wb") as f:
      f.write(np.array([magic] + dims, dtype=">u4").tobytes() + bytes(int(np.prod(dims))))
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'run'}",
                         f"--config.data.data_dir={tmp_path / 'data'}"])
  assert_one_line_error(code, err, "train-images-idx3-ubyte.gz")


def test_batch_that_does_not_split_across_devices(tmp_path):
  env = launcher_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                         "--config.data.batch_size=18"], env=env)
  assert_one_line_error(code, err, "batch_size=18", "4 devices")


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
  """A learning rate growing 31.6-fold a step diverges after some steps. Step s's loss is
  that of the state before update s, the checkpoint of step s - 1, so that one is deleted
  and the kept checkpoints end at s - 2, whose next step's loss was finite."""
  code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
                         "--config.train.ckpt_every=1", "--config.train.log_every=1",
                         "--config.vae.learning_rate=1e-2", "--config.vae.lr_schedule=geometric",
                         "--config.vae.final_lr_fraction=1e30"])
  line = assert_one_line_error(code, err, "non-finite", "at step")
  bad_step = int(line.split("at step ")[1].split(" ")[0].rstrip(";"))
  assert 4 <= bad_step < 20, line  # diverged, with checkpoints before it
  # Either the loss of step s (the state of step s - 1) or the state after update s itself
  # (checked before its checkpoint) was the first non-finite value.
  last_good = bad_step - 1 if "parameters or optimizer state" in line else bad_step - 2
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert kept and max(kept) == last_good, (line, kept)
  assert f"last good checkpoint (step {last_good}) is kept" in line
  losses = {row["step"]: row["loss"] for row in read_metrics(str(tmp_path))
            if row["split"] == "train"}
  assert np.isfinite(losses[last_good + 1]), losses  # the kept state's next loss
  assert not os.path.exists(tmp_path / "results.json")


def test_sharded_step_equals_single_device_step():
  env = launcher_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "train", "_sharded_check.py")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_the_loop_on_four_devices_ends_like_on_one(tmp_path):
  """The loop's own path (the device block of batches, its index, block sharding, the
  donated state) on 4 fake CPU devices against 1: the same train rows and test figures, up
  to the order of the batch's sums (a 4-device checkpoint does not restore on this
  process's one device, so the parameters are compared through what they compute)."""
  workdirs = {}
  for devices in (1, 4):
    workdirs[devices] = str(tmp_path / f"devices_{devices}")
    env = launcher_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code, _, err = launch(["--config=configs/mnist.py:smoke", f"--workdir={workdirs[devices]}"],
                          env=env)
    assert code == 0, err[-3000:]
  tree_leaves = __import__("jax").tree_util.tree_leaves
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      tree_leaves(checkpoint_params(workdirs[1], 20)),
      tree_leaves(checkpoint_params(workdirs[1], 10))))
  assert moved > 1e-3, moved  # ten Adam steps apart
  results = {d: json.load(open(os.path.join(w, "results.json"))) for d, w in workdirs.items()}
  for key in ("nll_nats", "elbo_nats"):
    assert results[1][key] == pytest.approx(results[4][key], rel=1e-4), key
  rows = {d: [r for r in read_metrics(w) if r["split"] == "train"] for d, w in workdirs.items()}
  assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[4]] == [5, 10, 15, 20]
  for a, b in zip(rows[1], rows[4]):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_paired_comparison_needs_the_same_images():
  """``runs.check_same_images``, which ``experiments.decoder_nll`` runs before a paired call,
  on what ``runs.images_evaluated`` says of each run."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from dgm_jax.train import runs  # pylint: disable=import-outside-toplevel
  from dgm_jax.train.guards import ConfigError  # pylint: disable=import-outside-toplevel
  images = np.zeros((3, 4), np.float32)
  data = types.SimpleNamespace(splits={"test": images})

  def run(method="vae", likelihood=None, seed=0):
    section = {} if likelihood is None else {"likelihood": likelihood}
    config = ml_collections.ConfigDict({"method": method, method: section,
                                        "eval": {"binarization_seed": seed}})
    return runs.images_evaluated(config, data, "test", 3)

  same = [run(), run("stein_vae"), run(likelihood="bernoulli")]
  runs.check_same_images(same, ["A", "B", "C"])
  # A discretized likelihood scores the 8-bit pixels, whatever the binarization seed.
  runs.check_same_images([run(likelihood="discretized_logistic", seed=s) for s in (0, 3)],
                         ["A", "B"])
  changed = images.copy()
  changed[1, 2] = 1.0
  observed = same[0][1]
  for evaluated, needle in (
      ([same[0], same[1], (changed, observed)], "C and A hold different"),
      ([same[0], (images[:2], observed)], "B and A hold different"),
      ([same[0], run(seed=3)], "binarization_seed=3"),
      ([same[0], run(likelihood="discretized_logistic")], "likelihood='discretized_logistic'")):
    with pytest.raises(ConfigError, match=needle):
      runs.check_same_images(evaluated, ["A", "B", "C"][:len(evaluated)])
