"""configs/cifar10.py:smoke through the real launchers (section 5.3.3, Figs. 5.2 and 5.6).

The smoke config runs Fig. 5.2's convolutional networks, a few channels wide, on
``synthetic_color32`` (labelled 32x32 8-bit RGB images), so no CIFAR-10 is
needed: bits/dim, RMSE and the classifier score, a resumed run, the config
check of the network keys, and ``experiments.compare_reconstructions`` on the
finished runs. One AS-VAE and one ALI run are shared by the tests of this module,
and the launches share the project classifier's cache and JAX's persistent
compilation cache (one folder per module), so later launches skip compiles that
an earlier one did; cached executables are the same code, so results are unchanged.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from dgm_jax.data import registry
from dgm_jax.eval import images
from dgm_jax.train import runs
from workdir_helpers import checkpoint_params, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "--config=configs/cifar10.py:smoke"
NUM_DIMS = 32 * 32 * 3


def launch(module, args, cache_dir):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", DGM_JAX_CACHE_DIR=str(cache_dir),
             JAX_COMPILATION_CACHE_DIR=os.path.join(cache_dir, "xla"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.run([sys.executable, "-m", module] + args, cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def finished_run(tmp_path_factory, cache_dir, experiment):
  workdir = tmp_path_factory.mktemp(experiment)
  proc = launch(f"experiments.{experiment}", [CONFIG, f"--workdir={workdir}"], cache_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def asvae_run(tmp_path_factory, cache_dir):
  return finished_run(tmp_path_factory, cache_dir, "asvae")


@pytest.fixture(scope="module")
def ali_run(tmp_path_factory, cache_dir):
  return finished_run(tmp_path_factory, cache_dir, "ali")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, cache_dir):
  return finished_run(tmp_path_factory, cache_dir, "vae")


@pytest.mark.parametrize("experiment", ["asvae", "ali", "vae"])
def test_smoke_run_reports_bits_per_dim_and_scores(request, experiment):
  workdir = request.getfixturevalue(f"{experiment}_run")
  results = json.load(open(workdir / "results.json"))
  assert results["method"] == experiment and results["steps"] == 20
  assert results["dataset"] == "synthetic_color32"
  assert results["data_source"].startswith("synthetic (synthetic_color32")
  nll = results["nll_nats"]
  assert np.isfinite(nll) and nll > 0
  assert results["bits_per_dim"] == pytest.approx(nll / (NUM_DIMS * math.log(2)))
  assert 0 < results["bits_per_dim"] < 16
  assert 0 < results["rmse"] < 1 and results["classifier_score"] >= 1
  config = json.load(open(workdir / "config.json"))[experiment]
  assert (config["encoder_arch"], config["decoder_arch"]) == ("conv", "conv")
  assert config["likelihood"] == "discretized_logistic" and config.get("flow_length", 0) == 0
  recon = Image.open(workdir / "samples" / "reconstructions_00000020.png")
  assert recon.mode == "RGB" and recon.size == (8 * 33 + 1, 8 * 33 + 1)  # 64 images of 32x32


def test_resumed_run_ends_like_the_uninterrupted_one(asvae_run, cache_dir, tmp_path):
  """Stopped at step 10 (a checkpoint), rerun to 20 in the same workdir: as the straight run."""
  workdir = tmp_path / "resumed"
  first = launch("experiments.asvae", [CONFIG, f"--workdir={workdir}",
                                       "--config.train.num_steps=10"], cache_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  assert json.load(open(workdir / "results.json"))["steps"] == 10
  second = launch("experiments.asvae", [CONFIG, f"--workdir={workdir}"], cache_dir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resuming from the checkpoint at step 10" in second.stderr
  assert_trees_equal(checkpoint_params(asvae_run, 20), checkpoint_params(workdir, 20))
  # The first segment's final test row at step 10 is dropped on resume (loop.py,
  # truncate_after): the rows are the straight run's, with no filter.
  assert read_metrics(asvae_run) == read_metrics(workdir)
  straight, resumed = (json.load(open(w / "results.json")) for w in (asvae_run, workdir))
  assert set(straight) == set(resumed)
  for key in set(straight) - {"wall_s", "eval_wall_s"}:
    assert straight[key] == resumed[key], key


def test_bad_architecture_is_one_error_line_before_training(tmp_path):
  workdir = tmp_path / "run"
  proc = launch("experiments.asvae", [CONFIG, f"--workdir={workdir}",
                                      "--config.asvae.encoder_arch=resnet"], tmp_path / "cache")
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "asvae.encoder_arch='resnet' is not a network architecture" in lines[0]
  assert not workdir.exists()  # stopped before the workdir, the data or any compile


def test_compare_reconstructions_writes_one_labelled_row_per_run(asvae_run, ali_run, tmp_path):
  output = tmp_path / "fig_5_6.png"
  proc = launch("experiments.compare_reconstructions",
                [f"--workdir={ali_run}", "--label=ALI", f"--workdir={asvae_run}",
                 "--label=AS-VAE", f"--output={output}", "--num_images=6", "--scale=2"],
                tmp_path / "cache")
  assert proc.returncode == 0, proc.stderr[-3000:]
  figure = np.asarray(Image.open(output).convert("RGB"))
  grid_height, grid_width = 2 * (3 * 33 + 1), 2 * (6 * 33 + 1)  # 3 rows of 6 images, pad 1
  assert figure.shape[0] == grid_height and figure.shape[1] > grid_width
  label_width = figure.shape[1] - grid_width
  for row in range(3):  # a label (dark pixels) left of every row
    band = figure[row * 66:(row + 1) * 66, :label_width]
    assert band.min() < 128, row
  originals = registry.load("synthetic_color32").splits["test"][:6]
  rows = [originals]
  for workdir in (ali_run, asvae_run):
    run = runs.load_run(str(workdir))
    assert int(run.state.step) == 20
    assert_trees_equal(run.state.params, checkpoint_params(workdir, 20))
    rows.append(np.asarray(run.method.reconstruct(run.state.params, {"x": originals}, None)))
  expected = np.repeat(np.repeat(images.image_grid(np.concatenate(rows), 6), 2, 0), 2, 1)
  difference = np.abs(figure[:, label_width:].astype(int) - expected.astype(int))
  assert difference.max() <= 1  # float32 in the script, float64 here: at most a rounding step
  assert np.array_equal(figure[:grid_height // 3, label_width:], expected[:grid_height // 3])


def test_compare_reconstructions_without_a_run_is_one_error_line(tmp_path):
  proc = launch("experiments.compare_reconstructions",
                [f"--workdir={tmp_path}", f"--output={tmp_path / 'fig.png'}"], tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: ConfigError: {tmp_path} holds no config.json: not the workdir of a run")
  assert not (tmp_path / "fig.png").exists()


def test_compare_reconstructions_refuses_runs_of_other_images_and_bad_flags(
    asvae_run, ali_run, tmp_path):
  """Each case is one error line and no figure: a run whose data (here another seed of
  the synthetic set) begins with other images, more images than the split holds, a
  zero scale, an output that cannot be written and one with no image extension."""
  other = tmp_path / "other_seed"
  shutil.copytree(asvae_run, other)
  config = json.load(open(other / "config.json"))
  config["seed"] = config["seed"] + 1
  json.dump(config, open(other / "config.json", "w"))
  output = tmp_path / "fig.png"
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  cases = [
      ([f"--workdir={ali_run}", f"--workdir={other}", f"--output={output}"],
       "begins with other images"),
      ([f"--workdir={ali_run}", "--num_images=100000", f"--output={output}"],
       "--num_images=100000"),
      ([f"--workdir={ali_run}", "--scale=0", f"--output={output}"], "--scale"),
      ([f"--workdir={ali_run}", "--num_images=2", f"--output={blocker / 'fig.png'}"],
       "cannot write --output"),
      ([f"--workdir={ali_run}", "--num_images=2", f"--output={tmp_path / 'fig'}"],
       "name an image file ending in .png"),
  ]
  for args, needle in cases:
    proc = launch("experiments.compare_reconstructions", args, tmp_path / "cache")
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and needle in lines[0], (needle, lines)
    assert not output.exists()
