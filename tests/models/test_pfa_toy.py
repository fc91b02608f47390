"""The Poisson factor analysis check of 4.5.1: Gibbs against exact moments, densities, launcher."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from dgm_jax.models import pfa_toy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(args, timeout=300):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.pfa", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def quadrature_moments(x, loadings, shape, rate, grid):
  """Posterior means and variances [V] of z for V = 2 by a product rule on a grid of u = log z."""
  u1, u2 = np.meshgrid(grid, grid, indexing="ij")
  z = np.stack([np.exp(u1), np.exp(u2)], axis=-1)  # [G, G, 2]
  log_density = (scipy.stats.poisson.logpmf(x, z @ loadings.T).sum(-1)
                 + scipy.stats.gamma.logpdf(z, shape, scale=1.0 / rate).sum(-1) + u1 + u2)
  weights = np.exp(log_density - log_density.max())
  weights /= weights.sum()
  mean = np.einsum("ij,ijv->v", weights, z)
  return mean, np.einsum("ij,ijv->v", weights, (z - mean) ** 2)


class TestGibbsSample:

  def test_one_factor_draws_are_the_exact_gamma_posterior(self):
    # With V = 1 and a column summing to one, z | x ~ Gamma(shape + sum x, rate + 1) exactly,
    # and every sweep is an independent draw of it; the empty document checks the token padding.
    loadings = np.array([[0.2], [0.5], [0.3]])
    x = np.array([[0, 1, 2], [4, 0, 7], [0, 0, 0]], np.float32)
    shape, rate, num_chains, num_draws = 0.5, 0.05, 4, 1000
    draws = np.asarray(pfa_toy.gibbs_sample(jax.random.PRNGKey(0), x, loadings, shape, rate,
                                            num_burnin=5, num_draws=num_draws, thin=1,
                                            num_chains=num_chains), np.float64)
    count = num_chains * num_draws
    assert draws.shape == (3, count, 1)
    post_shape = shape + x.sum(1)
    mean, var = post_shape / (rate + 1.0), post_shape / (rate + 1.0) ** 2
    # Standard errors of i.i.d. sample moments: sd / sqrt(S), and for the variance
    # var * sqrt((kurtosis - 1) / S), with the Gamma's kurtosis 3 + 6 / shape.
    np.testing.assert_array_less(np.abs(draws[..., 0].mean(1) - mean), 4 * np.sqrt(var / count))
    var_error = var * np.sqrt((2.0 + 6.0 / post_shape) / count)
    np.testing.assert_array_less(np.abs(draws[..., 0].var(1, ddof=1) - var), 4 * var_error)

  def test_two_factor_moments_match_quadrature(self):
    # Overlapping loadings: the split of each count depends on z, and z1, z2 are correlated.
    loadings = np.array([[0.6, 0.1], [0.3, 0.3], [0.1, 0.6]])
    x = np.array([[6, 2, 1], [1, 3, 5]], np.float32)
    shape, rate, num_chains = 2.0, 0.5, 16
    draws = np.asarray(pfa_toy.gibbs_sample(jax.random.PRNGKey(1), x, loadings, shape, rate,
                                            num_burnin=100, num_draws=1000, thin=5,
                                            num_chains=num_chains), np.float64)
    chains = draws.reshape(2, num_chains, -1, 2)  # draws come chain by chain
    grid = np.linspace(-8.0, 4.5, 801)
    for doc in range(2):
      mean, var = quadrature_moments(x[doc], loadings, shape, rate, grid)
      # Independent chains: the spread of their means (variances) is the Monte Carlo error.
      chain_means, chain_vars = chains[doc].mean(1), chains[doc].var(1, ddof=1)
      mean_error = chain_means.std(0, ddof=1) / np.sqrt(num_chains)
      var_error = chain_vars.std(0, ddof=1) / np.sqrt(num_chains)
      np.testing.assert_array_less(np.abs(chain_means.mean(0) - mean), 5 * mean_error)
      np.testing.assert_array_less(np.abs(chain_vars.mean(0) - var), 5 * var_error)
      assert np.all(mean_error < 0.03 * mean)  # the test resolves a few percent

  def test_rejects_non_counts(self):
    with pytest.raises(ValueError, match="counts"):
      pfa_toy.gibbs_sample(jax.random.PRNGKey(0), np.array([[0.5, 1.0]]), np.eye(2), 1.0, 1.0)


class TestLogJoint:
  toy = pfa_toy.PfaToy(np.array([[0.5, 0.1], [0.3, 0.2], [0.2, 0.7]]), 0.5, 0.05)
  x = np.array([[0.0, 3.0, 1.0], [7.0, 0.0, 2.0]])
  z = np.array([[0.3, 4.0], [12.0, 0.02]])

  def expected(self):
    return (scipy.stats.poisson.logpmf(self.x, self.z @ self.toy.loadings.T).sum(-1)
            + scipy.stats.gamma.logpdf(self.z, self.toy.shape, scale=1 / self.toy.rate).sum(-1))

  def test_is_the_model_density(self):
    got = pfa_toy.log_joint(self.toy, jnp.asarray(self.x), jnp.asarray(self.z))
    np.testing.assert_allclose(got, self.expected(), rtol=1e-10)

  def test_unconstrained_adds_the_log_jacobian(self):
    u = np.log(self.z)
    got = pfa_toy.log_joint_unconstrained(self.toy, jnp.asarray(self.x), jnp.asarray(u))
    np.testing.assert_allclose(got, self.expected() + u.sum(-1), rtol=1e-10)


def test_marginal_variance_errors_match_direct_formulas():
  rng = np.random.default_rng(0)
  reference = rng.gamma(2.0, size=(3, 50, 2))
  mean = reference.mean(1, keepdims=True)
  half = np.sqrt(0.5) * (reference - mean) + mean  # same means, half the variances
  # factor 0 at half its variance in every document, factor 1 at a quarter in document 0
  # and twice it in the others: |r - 1| is 0.5 (x3), 0.75 and 1 (x2)
  scale = np.sqrt(np.array([[0.5, 0.25], [0.5, 2.0], [0.5, 2.0]]))[:, None, :]
  mixed = scale * (reference - mean) + mean
  report, variances = pfa_toy.marginal_variance_errors(
      {"half": jnp.asarray(half), "mixed": jnp.asarray(mixed)}, jnp.asarray(reference))
  np.testing.assert_allclose(variances["reference"], reference.var(1, ddof=1), rtol=1e-10)
  np.testing.assert_allclose([report["half"][k] for k in ("var_rel_error", "var_ratio",
                                                          "var_ratio_geomean", "mean_rel_error")],
                             [0.5, 0.5, 0.5, 0.0], atol=1e-10)
  errors = np.array([0.5, 0.5, 0.5, 0.75, 1.0, 1.0])
  np.testing.assert_allclose(
      [report["mixed"][k] for k in ("var_rel_error", "var_rel_error_median",
                                    "var_rel_error_max", "var_log_ratio_max")],
      [errors.mean(), np.median(errors), 1.0, np.log(4.0)], rtol=1e-6)


def test_smoke_launcher_writes_results_and_figure(tmp_path):
  workdir = tmp_path / "pfa"
  code, _, err = launch(["--config=configs/pfa.py:smoke", f"--workdir={workdir}"])
  assert code == 0, err[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert (results["method"], results["dataset"], results["setting"]) == ("pfa_toy", "pfa", "toy")
  for name in ("gibbs", "stein", "vae"):
    assert set(results[name]) == {"var_rel_error", "var_rel_error_median", "var_rel_error_max",
                                  "var_log_ratio_max", "var_ratio", "var_ratio_geomean",
                                  "mean_rel_error"}
    assert all(np.isfinite(v) for v in results[name].values())
  assert results["num_gibbs_draws"] == 2 * 40 // 2  # two chains of 40 sweeps, every 2nd kept
  assert (workdir / "samples" / "pfa_marginals.png").stat().st_size > 1000
  assert json.loads((workdir / "config.json").read_text())["gibbs"]["num_burnin"] == 20
  assert (workdir / "metrics.jsonl").read_text().count("\n") == 4  # 20 steps, every 5


@pytest.mark.parametrize("args, needle", [
    (["--config.data.name=gmm"], "'pfa' toy only"),
    (["extra"], "'extra'"),
    (["--config.data.options.setting=huge"], "unknown pfa setting 'huge'"),
    (["--config.stein_vae.no_such_key=1"], "no_such_key"),
])
def test_bad_config_ends_with_one_error_line(tmp_path, args, needle):
  code, _, err = launch(["--config=configs/pfa.py:smoke", f"--workdir={tmp_path}", *args])
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert code == 1 and len(lines) == 1 and needle in lines[0], err[-3000:]
  assert "Traceback" not in err
  assert not (tmp_path / "results.json").exists()
