"""benchmarks/svgd_gmm.py: its MMD tells exact draws from a sampler that misses the shape.

The bandwidth is fixed by the target (2 tr Sigma of the exact component covariance), so
particles collapsed onto the two modes' centres, or spread twice as wide, score far above
a second set of exact draws (with a median bandwidth over the pooled samples, about 34
here, the three scored alike: -0.002, -0.001 and -0.005).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def svgd_gmm():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  try:
    import svgd_gmm as module  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  return module


def test_mmd_separates_exact_draws_from_collapsed_and_overdispersed_particles(svgd_gmm):
  _, sample, mixture, _ = svgd_gmm.target()
  log_w, means, _ = mixture
  exact = sample(jax.random.PRNGKey(7), 2000)
  draws = sample(jax.random.PRNGKey(8), 400)
  # 400 particles on the two centres in the exact proportions
  counts = np.round(400 * np.exp(np.asarray(log_w))).astype(int)
  collapsed = jnp.concatenate([jnp.broadcast_to(means[c], (counts[c], 2)) for c in range(2)])
  # the exact draws pushed twice as far from their own mode's centre
  nearest = jnp.argmin(jnp.sum((draws[:, None] - means[None]) ** 2, -1), axis=1)
  centres = means[nearest]
  wide = centres + 2.0 * (draws - centres)
  floor = svgd_gmm._mmd(draws, exact, mixture)  # pylint: disable=protected-access
  assert abs(floor) < 0.01, floor
  for name, particles in (("collapsed", collapsed), ("twice as wide", wide)):
    value = svgd_gmm._mmd(particles, exact, mixture)  # pylint: disable=protected-access
    assert value > 0.02 and value > 5 * abs(floor), (name, value, floor)


def test_our_whole_run_as_a_fresh_process_ends_where_the_jitted_loop_ends(svgd_gmm):
  """The timed process gets the target from the parent and runs the same jitted loop."""
  import argparse  # pylint: disable=import-outside-toplevel
  log_density, sample, mixture, _ = svgd_gmm.target()
  exact = sample(jax.random.PRNGKey(7), 500)
  args = argparse.Namespace(particles=16, iters=30, step_size=1.0)
  # pylint: disable=protected-access
  wall, mmd = svgd_gmm._time_process("ours", args, exact, mixture)
  z = svgd_gmm.ours_runner(log_density, 1.0, 30)(svgd_gmm.initial_particles(16))
  assert wall > 0
  assert mmd == pytest.approx(svgd_gmm._mmd(z, exact, mixture), abs=1e-5)
