"""The Gaussian-mixture toy of 4.5.1: metrics against direct formulas, the launcher, Stein modes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from dgm_jax.models import posterior_toy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
finite = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def direct_mmd(x, y, bandwidth, unbiased):
  """MMD^2 by explicit sums over pairs."""
  k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / bandwidth)
  n, m = len(x), len(y)
  pairs = lambda u, v, skip_same: [k(u[i], v[j]) for i in range(len(u)) for j in range(len(v))
                                   if not (skip_same and i == j)]
  if unbiased:
    within_x = sum(pairs(x, x, True)) / (n * (n - 1))
    within_y = sum(pairs(y, y, True)) / (m * (m - 1))
  else:
    within_x, within_y = sum(pairs(x, x, False)) / n**2, sum(pairs(y, y, False)) / m**2
  return within_x + within_y - 2.0 * sum(pairs(x, y, False)) / (n * m)


class TestMmd:

  @given(hnp.arrays(np.float64, (5, 2), elements=finite(-3.0, 3.0)),
         hnp.arrays(np.float64, (7, 2), elements=finite(-3.0, 3.0)),
         finite(0.1, 10.0), st.booleans())
  def test_matches_the_direct_formula(self, x, y, bandwidth, unbiased):
    got = posterior_toy.mmd(jnp.asarray(x), jnp.asarray(y), bandwidth, unbiased)
    np.testing.assert_allclose(got, direct_mmd(x, y, bandwidth, unbiased), rtol=1e-6, atol=1e-9)

  def test_separates_different_distributions_and_not_equal_ones(self):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x, y = (jax.random.normal(k, (400, 2)) for k in keys[:2])
    shifted = jax.random.normal(keys[2], (400, 2)) + jnp.array([1.0, 0.0])
    same, different = posterior_toy.mmd(x, y, 2.0), posterior_toy.mmd(x, shifted, 2.0)
    assert abs(same) < 0.01 < 0.05 < different


class TestModeWeights:

  def test_counts_constructed_clusters(self):
    means = jnp.array([[4.0, 4.0], [-4.0, -4.0]])
    near = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (100, 2))
    samples = jnp.concatenate([means[0] + near[:30], means[1] + near[30:]])
    np.testing.assert_allclose(posterior_toy.mode_weights(samples, means, jnp.eye(2)), [0.3, 0.7])

  @given(hnp.arrays(np.float64, (40, 2), elements=finite(-4.0, 4.0)),
         finite(-0.9, 0.9), finite(0.2, 3.0))
  def test_assigns_each_sample_to_the_more_likely_component(self, samples, correlation, scale):
    cov = np.array([[1.0, correlation], [correlation, 1.0]]) * np.array([[1.0, scale], [scale, scale**2]])
    means = np.array([[1.0, 0.5], [-0.5, -1.0]])
    log_p = [scipy.stats.multivariate_normal(m, cov).logpdf(samples) for m in means]
    first = np.mean(log_p[0] > log_p[1])
    got = posterior_toy.mode_weights(jnp.asarray(samples), jnp.asarray(means), jnp.asarray(cov))
    np.testing.assert_allclose(got, [first, 1.0 - first], atol=1e-12)

  def test_exact_weights_match_monte_carlo_of_the_same_rule(self):
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    means = np.array([[0.8, 0.2], [-0.4, -0.3]])  # overlapping components
    log_weights = np.log([0.3, 0.7])
    rng = np.random.default_rng(0)
    component = rng.random(20_000) < 0.3
    samples = np.where(component[:, None], means[0], means[1]) + rng.multivariate_normal(
        [0.0, 0.0], cov, 20_000)
    monte_carlo = posterior_toy.mode_weights(jnp.asarray(samples), jnp.asarray(means), jnp.asarray(cov))
    exact = posterior_toy.exact_mode_weights(jnp.asarray(log_weights), jnp.asarray(means),
                                             jnp.asarray(cov))
    np.testing.assert_allclose(exact, monte_carlo, atol=4 * np.sqrt(0.25 / 20_000))
    assert abs(float(exact[0]) - 0.3) > 0.05  # the overlap matters here

  def test_exact_weights_of_separated_components_are_the_component_weights(self):
    means = jnp.array([[10.0, 10.0], [-10.0, -10.0]])
    got = posterior_toy.exact_mode_weights(jnp.log(jnp.array([0.25, 0.75])), means, jnp.eye(2))
    np.testing.assert_allclose(got, [0.25, 0.75], atol=1e-12)


def test_log_joint_is_the_model_density():
  toy = posterior_toy.Toy(np.array([[2.0, -1.0], [1.0, -2.0]]), 0.3, np.array([1.0, 2.0]))
  x, z = np.array([0.5, -1.0]), np.array([[0.2, 0.4], [-1.0, 1.5]])
  mvn = scipy.stats.multivariate_normal
  expected = (mvn(np.zeros(2), 0.09 * np.eye(2)).logpdf(x - z @ toy.theta.T)
              + np.log(0.5 * mvn(toy.mu).pdf(z) + 0.5 * mvn(-toy.mu).pdf(z)))
  np.testing.assert_allclose(posterior_toy.log_joint(toy, jnp.asarray(x), jnp.asarray(z)),
                             expected, rtol=1e-10)


def test_smoke_launcher_writes_results_and_figure(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  workdir = tmp_path / "gmm"
  proc = subprocess.run([sys.executable, "-m", "experiments.gmm", "--config=configs/gmm.py:smoke",
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert (results["method"], results["dataset"], results["setting"]) == ("gmm_toy", "gmm", "paper")
  for name in ("exact", "stein", "vae"):
    assert set(results[name]) == {"mmd", "mode_weight_error", "min_mode_weight",
                                  "mean_rel_error", "mean_rel_error_max", "mean_error_in_std",
                                  "mean_error_whitened", "cov_rel_error", "cov_rel_error_max",
                                  "cov_whitened_error", "cov_whitened_error_max"}
    assert all(np.isfinite(v) for v in results[name].values())
  assert len(results["exact_mode_weights"]) == results["num_examples"]["test"]
  assert (workdir / "samples" / "posterior.png").stat().st_size > 1000
  assert json.loads((workdir / "config.json").read_text())["data"]["options"]["setting"] == "paper"
  assert (workdir / "metrics.jsonl").read_text().count("\n") == 4  # 20 steps, every 5
  # A re-run starts over: the same rows, not twice as many.
  rows = (workdir / "metrics.jsonl").read_text()
  again = subprocess.run(proc.args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (workdir / "metrics.jsonl").read_text() == rows


@pytest.mark.parametrize("overrides,needles", [
    (["--config.stein_vae.no_such_key=1"], ("no_such_key",)),
    (["--config.train.num_steps=0"], ("train.num_steps=0", "must be a positive integer")),
    (["--config.stein_vae.num_particles=0", "--config.vae.activation=gelu2"],
     ("stein_vae.num_particles=0 must be a positive integer", "vae.activation='gelu2'")),
    (["--config.eval.num_posterior_samples=1"], ("num_posterior_samples=1 must be an integer >= 2",)),
    (["--config.stein_vae.learning_rate=1e38", "--config.vae.learning_rate=1e38"],
     ("non-finite", "at step"))])
def test_bad_run_ends_with_one_error_line(tmp_path, overrides, needles):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.gmm", "--config=configs/gmm.py:smoke",
                         f"--workdir={tmp_path}"] + overrides, cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert all(needle in lines[0] for needle in needles), lines[0]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "results.json").exists()
  assert not (tmp_path / "metrics.jsonl").exists()


def _samples_with_moments(rng, mean, cov, num):
  """[num, D] points whose sample mean and (N - 1) sample covariance are exactly mean, cov."""
  u = rng.standard_normal((num, mean.shape[0]))
  u -= u.mean(axis=0)
  u = u @ np.linalg.inv(np.linalg.cholesky(np.cov(u, rowvar=False))).T  # cov(u) = I
  return mean + u @ np.linalg.cholesky(cov).T


def test_evaluate_moment_errors_against_scipy():
  rng = np.random.default_rng(0)
  # one Gaussian as a mixture of two equal components; narrow along (1, 1), as in 'paper'
  rotation = np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)
  exact_cov = rotation @ np.diag([0.001, 0.01]) @ rotation.T
  exact_mean = np.array([3.0, -4.0])
  posterior = (np.log(np.full((1, 2), 0.5)), np.broadcast_to(exact_mean, (1, 2, 2)),
               np.broadcast_to(exact_cov, (1, 2, 2, 2)))
  # the narrow direction's variance doubled, the mean off by one narrow std along it
  sample_cov = rotation @ np.diag([0.002, 0.01]) @ rotation.T
  error = np.sqrt(0.001) * rotation[:, 0]
  samples = _samples_with_moments(rng, exact_mean + error, sample_cov, 4000)[None]
  reference = _samples_with_moments(rng, exact_mean, exact_cov, 4000)[None]
  report, _, _ = posterior_toy.evaluate({"q": jnp.asarray(samples, jnp.float32)},
                                        jnp.asarray(reference, jnp.float32), posterior)
  inv_sqrt = np.linalg.inv(scipy.linalg.sqrtm(exact_cov).real)
  whitened = np.linalg.norm(inv_sqrt @ sample_cov @ inv_sqrt - np.eye(2)) / np.sqrt(2.0)
  frobenius = np.linalg.norm(sample_cov - exact_cov) / np.linalg.norm(exact_cov)
  q = report["q"]
  np.testing.assert_allclose(q["cov_whitened_error"], whitened, rtol=1e-3)  # 1 / sqrt(2)
  np.testing.assert_allclose(q["cov_whitened_error_max"], whitened, rtol=1e-3)
  np.testing.assert_allclose(q["cov_rel_error"], frobenius, rtol=1e-3)  # only 0.0995
  np.testing.assert_allclose(q["mean_error_whitened"], 1.0, rtol=1e-3)
  np.testing.assert_allclose(q["mean_rel_error"], np.sqrt(0.001) / 5.0, rtol=1e-3)
  np.testing.assert_allclose(q["mean_error_in_std"], np.sqrt(0.001 / 0.011), rtol=1e-3)


def test_history_rows_average_the_iterations_since_the_row_before():
  """Every log_every iterations the mean since the previous row (it was the single value
  at that iteration); a method with twice the updates is first averaged in pairs."""
  stein = {"loss": np.arange(10.0)}
  vae = {"loss": np.arange(20.0)}
  rows = posterior_toy.history_records({"stein": stein, "vae": vae}, log_every=4)
  assert [step for step, _ in rows] == [4, 8]
  assert rows[0][1] == {"stein/loss": np.mean([0, 1, 2, 3]),
                        "vae/loss": np.mean(np.arange(8.0))}
  assert rows[1][1]["stein/loss"] == np.mean([4, 5, 6, 7])
  short = posterior_toy.history_records({"stein": {"loss": np.array([1.0, 3.0])}}, log_every=5)
  assert short == [(2, {"stein/loss": 2.0})]
