"""The 2-D toys of section 4.5.1 meet the issue's acceptance on their real configs.

Each test runs one experiment through its launcher with the config a user runs
(``configs/gmm.py``, ``configs/gmm.py:bimodal``, ``configs/pfa.py``; 1.5 to 3 minutes each
on one core) and reads the thresholds off ``results.json``:

- bimodal GMM: the Stein samples' mode weights within 0.05 of the exact ones on average
  over the test points, and an MMD to exact samples at most half the Gaussian VAE's;
- the dissertation's GMM: the posterior mean and covariance within 10% of the exact ones;
- PFA: the Stein VAE's marginal variances within 20% of the Gibbs sampler's, and closer
  than the VAE's.

What these do not show is written beside the figures in the README: in the bimodal setting
every exact weight is 0.5 (``configs/gmm.py:bimodal,shifted`` is the setting where the
weights vary, and the Stein encoder does not follow them).
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(module, config, workdir):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", module, f"--config={config}",
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text())


def test_gmm_bimodal_stein_finds_both_modes_and_halves_the_vae_mmd(tmp_path):
  results = run("experiments.gmm", "configs/gmm.py:bimodal", tmp_path / "gmm")
  stein, vae = results["stein"], results["vae"]
  assert results["setting"] == "bimodal" and results["mu"] == [5.0, 5.0]
  assert stein["mode_weight_error"] <= 0.05, stein
  assert stein["min_mode_weight"] >= 0.4, stein
  assert stein["mmd"] <= 0.5 * vae["mmd"], (stein, vae)


def test_gmm_paper_stein_mean_and_covariance_within_ten_percent(tmp_path):
  results = run("experiments.gmm", "configs/gmm.py", tmp_path / "gmm")
  stein = results["stein"]
  assert results["setting"] == "paper"
  assert stein["mean_rel_error"] <= 0.1, stein
  assert stein["cov_rel_error"] <= 0.1, stein


def test_pfa_stein_variances_within_twenty_percent_and_closer_than_the_vae(tmp_path):
  results = run("experiments.pfa", "configs/pfa.py", tmp_path / "pfa")
  stein, vae = results["stein"], results["vae"]
  assert stein["var_rel_error"] <= 0.2, stein
  assert stein["var_rel_error"] < vae["var_rel_error"], (stein, vae)
  assert vae["var_ratio"] < 1.0, vae  # the VAE underestimates them, as in Fig. 4.2


@pytest.mark.parametrize("arg,mu", [("bimodal", (5.0, 5.0)), ("bimodal,shifted", (5.0, 4.0))])
def test_gmm_shifted_moves_the_prior_means(arg, mu):
  from configs import gmm  # pylint: disable=import-outside-toplevel
  config = gmm.get_config(arg)
  assert tuple(config.data.options.get("mu", (5.0, 5.0))) == mu


def test_gmm_shifted_needs_bimodal():
  from configs import gmm  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="goes with 'bimodal'"):
    gmm.get_config("shifted")
