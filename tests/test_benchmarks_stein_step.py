"""benchmarks/stein_step.py runs end to end at a tiny size; its SVGD equals numpyro's.

No timing thresholds here: the speed goals live in the benchmark's output only.
The numpyro comparison is a correctness check too: from the same particles, with
the same bandwidth and optimizer, our closed-form SVGD and numpyro's autodiff
SVGD must end at the same particles.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "stein_step.py")
HAS_NUMPYRO = importlib.util.find_spec("numpyro") is not None


def test_tiny_run_prints_one_json_line(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  # The comparison's fresh-process timings (numpyro's import and compile, about a minute
  # here) are left out; tests/test_benchmarks_svgd_gmm.py times our process.
  cmd = [sys.executable, SCRIPT, "--particles", "4", "--batch", "4", "--repeats", "1",
         "--svgd-particles", "16", "--svgd-iters", "30", "--svgd-no-processes"]
  if not HAS_NUMPYRO:
    cmd.append("--no-numpyro")
  proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  assert result["benchmark"] == "stein_step"
  rows = {(row["num_particles"], row["kernel"], row["decoder_grad_particles"],
           row["encoder_fit_particles"], row["preconditioner"]) for row in result["rows"]}
  # Gradient subsets 0:0, 10:0 (above M here, skipped) and 1:10 (skipped) for rbf;
  # all particles only for coordinatewise and the Gauss-Newton preconditioner
  assert rows == {(4, k, 0, 0, p)
                  for k, p in (("rbf", "none"), ("coordinatewise", "none"),
                               ("rbf", "gauss_newton"))}, rows
  for row in result["rows"]:
    assert row["step_ms"] > 0 and row["decoder_scores_ms"] > 0
    assert math.isclose(row["step_over_scores"], row["step_ms"] / row["decoder_scores_ms"],
                        rel_tol=0.01)
    # The step contains the scores' work and more (the decoder's and encoder's gradients).
    assert row["step_over_scores_flops"] > 1.0, row
  comparison = result["svgd_vs_numpyro"]
  if not HAS_NUMPYRO:
    assert comparison is None
    return
  assert comparison["num_particles"] == 16 and comparison["iterations"] == 30
  # The same algorithm: after 30 Adagrad moves of particles spread over |z| ~ 7 they
  # agree to float32 round-off (1e-4 measured); our own liu_wang bandwidth instead of
  # numpyro's already moves them apart by 0.04.
  assert comparison["max_particle_diff"] < 1e-3, comparison
  assert math.isclose(comparison["ours_mmd"], comparison["numpyro_mmd"], abs_tol=1e-4)
  assert comparison["mode_weights"] == [0.5, 0.5]
  for key in ("ours_ms_per_iter", "numpyro_ms_per_iter"):
    assert comparison[key] > 0, key
  assert "ours_process_s" not in comparison


def test_compiled_flops_counts_a_matmul_as_2mnk():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  try:
    import stein_step  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
  compiled = jax.jit(lambda p, q: p @ q).lower(a, b).compile()
  assert stein_step.compiled_flops(compiled) == 2 * 8 * 16 * 4
