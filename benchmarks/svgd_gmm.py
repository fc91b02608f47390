"""Our SVGD against numpyro's (``numpyro.contrib.einstein.SVGD``) on a bimodal posterior.

The target is the exact posterior of the Gaussian-mixture toy of section 4.5.1
in its rank-deficient ('bimodal') setting, at the test point whose two modes
are closest to equal weight: a two-Gaussian mixture in 2-D, known exactly
(``synthetic.gmm_exact_posterior``), so the MMD to exact samples measures
each sampler's accuracy. The MMD's RBF bandwidth is ``2 tr(Sigma)`` of the exact
component covariance for every sampler (``exact_draws_mmd``, as many exact draws as
particles, is its floor): a median over the pooled samples would follow the distance
between the modes and score particles collapsed onto the two centres like exact draws.

Both samplers run the same algorithm from the same M initial particles:
SVGD directions ``phi(z)`` applied by Adagrad with momentum 0.9 (numpyro's
``Adagrad``, which SVGD's authors and numpyro recommend; ours calls the same
``jax.example_libraries.optimizers.adagrad``), the RBF kernel with numpyro's
bandwidth (median of all M*M pairwise distances, squared, over log M).
``max_particle_diff`` checks that the two end at the same particles. Ours computes the
move in closed form (``dgm_jax.svgd.svgd_direction``) and the median by bisection
(``kernels.fast_median``). numpyro's attractive force differentiates the log density
inside a loop over the particle pairs (M * M gradients per iteration, where the closed
form needs M) and sorts for ``jnp.median``: most of the speed ratio is that design.

Timings, in one run: seconds per iteration of each jitted loop (compile
excluded, median of repeats), and the wall time of a whole 2,000-iteration
run as a fresh Python process (imports, building the target, tracing,
compilation and the run: what a user waits for, given the target's mixture parameters;
the MMD of its particles is computed afterwards, outside the timing; the process gets no
persistent compilation cache), ours through ``--process ours`` and numpyro's ``SVGD.run`` through
``--process numpyro``. numpyro's ``run()`` starts from its own initialization there,
so only the in-process loops share particles.

  python benchmarks/svgd_gmm.py [--particles 100 --iters 2000 --step-size 1.0]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.example_libraries import optimizers

from dgm_jax import kernels, svgd
from dgm_jax.data import synthetic

__all__ = ["target", "numpyro_bandwidth", "ours_runner", "numpyro_runner", "compare"]


def target():
  """(log_density, exact_sampler, info) of the most balanced bimodal test posterior."""
  data = synthetic.load_gmm(setting="bimodal", num_train=2, num_valid=2)  # only test is used
  extras = data.extras
  x = data.splits["test"]
  posterior = extras["test_posterior"]  # the exact posterior of every test point (4.55)-(4.60)
  log_w, means, covs = (jnp.asarray(posterior[k], jnp.float32)
                        for k in ("log_weights", "means", "covs"))
  index = int(np.argmin(np.abs(np.exp(posterior["log_weights"])[:, 0] - 0.5)))
  log_w, means, covs = log_w[index], means[index], covs[index]
  log_density = mixture_log_density((log_w, means, covs))

  def sample(key, num):
    return synthetic.gmm_posterior_sample(key, x[index:index + 1], extras["theta"],
                                          extras["sigma"], extras["mu"], num)[0]

  info = {"test_point": index,
          "mode_weights": np.exp(posterior["log_weights"][index]).round(4).tolist(),
          "mode_means": posterior["means"][index].round(3).tolist()}
  return log_density, sample, (log_w, means, covs), info


def mixture_log_density(mixture):
  """``z [2] -> log p(z)`` of a two-Gaussian mixture ``(log_weights, means, covs)``.

  The precisions and normalizers are computed once, in float64 numpy, so the jitted
  density is a quadratic form and a logsumexp (a third less compile time in the timed
  process than ``multivariate_normal.logpdf``'s solves).
  """
  log_w, means, covs = (np.asarray(a, np.float64) for a in mixture)
  precisions = np.linalg.inv(covs)
  log_norms = log_w - 0.5 * (np.linalg.slogdet(2 * np.pi * covs)[1])
  precisions, means, log_norms = (jnp.asarray(a, jnp.float32)
                                  for a in (precisions, means, log_norms))

  def log_density(z):
    diff = z - means  # [C, D]
    return jax.nn.logsumexp(log_norms - 0.5 * jnp.einsum("cd,cde,ce->c", diff, precisions, diff))

  return log_density


def initial_particles(num_particles):
  """The M starting particles both samplers share: N(0, I) draws (numpy, no device work)."""
  return np.random.default_rng(0).standard_normal((num_particles, 2)).astype(np.float32)


def numpyro_bandwidth(z):
  """numpyro's RBF bandwidth: median of all M*M pairwise distances, squared, over log M.

  numpyro squares the median distance (plus float eps); for an even count of
  M*M distances the median of the squares differs from it by
  ``((d_a - d_b) / 2)^2`` for the two middle distances: below float32
  round-off here (the particles agree to 2e-4 after 2,000 moves).
  """
  return kernels.fast_median(kernels.pairwise_sq_dists(z, z).reshape(-1)) / math.log(z.shape[0])


def ours_runner(log_density, step_size, num_iters):
  """A jitted ``z0 -> z`` running ``num_iters`` closed-form SVGD moves under Adagrad."""
  score = jax.vmap(jax.grad(log_density))
  opt_init, opt_update, get_params = optimizers.adagrad(step_size, momentum=0.9)

  def move(i, opt_state):
    z = get_params(opt_state)
    direction = svgd.svgd_direction(z, score(z), bandwidth=numpyro_bandwidth(z))
    return opt_update(i, -direction, opt_state)

  return jax.jit(lambda z0: get_params(jax.lax.fori_loop(0, num_iters, move, opt_init(z0))))


def _numpyro_svgd(mixture, step_size, num_particles):
  import numpyro  # pylint: disable=import-outside-toplevel
  from numpyro import distributions as dist  # pylint: disable=import-outside-toplevel
  from numpyro.contrib.einstein import SVGD, RBFKernel  # pylint: disable=import-outside-toplevel
  from numpyro.optim import Adagrad  # pylint: disable=import-outside-toplevel

  log_w, means, covs = mixture

  def model():
    numpyro.sample("z", dist.MixtureSameFamily(
        dist.Categorical(logits=log_w), dist.MultivariateNormal(means, covariance_matrix=covs)))

  return SVGD(model, Adagrad(step_size), RBFKernel(), num_stein_particles=num_particles)


def numpyro_runner(mixture, step_size, num_iters, z0):
  """A jitted ``state -> state`` of ``num_iters`` numpyro SVGD updates, and its start state."""
  from numpyro.contrib.einstein.steinvi import SteinVIState  # pylint: disable=g-import-not-at-top

  sampler = _numpyro_svgd(mixture, step_size, z0.shape[0])
  state = sampler.init(jax.random.PRNGKey(1))
  (name,) = sampler.get_params(state).keys()
  state = SteinVIState(sampler.optim.init({name: z0}), state.rng_key, state.loss_temperature,
                       state.repulsion_temperature)
  run = jax.jit(lambda s: jax.lax.fori_loop(0, num_iters, lambda _, t: sampler.update(t)[0], s))
  return run, state, lambda s: sampler.get_params(s)[name]


def _mmd(samples, exact, mixture):
  """Unbiased MMD^2 to exact draws, bandwidth ``2 tr(Sigma)`` of the exact component covariance.

  One bandwidth for every sampler, set by the target alone (as
  ``posterior_toy.evaluate`` does): a median over the pooled samples would follow the
  distance between the modes (about 34 here, against 2 tr Sigma of about 2) and could not
  tell particles collapsed onto the two modes' centres from exact draws.
  """
  # Imported here: the timed fresh process (``--process``) never computes an MMD, and
  # posterior_toy's imports (flax) would add 0.6 s to its start.
  from dgm_jax.models import posterior_toy  # pylint: disable=import-outside-toplevel
  _, _, covs = mixture
  bandwidth = 2.0 * jnp.trace(covs[0])
  return float(posterior_toy.mmd(samples, exact, bandwidth))


def _timed(fn, arg, repeats):
  jax.block_until_ready(fn(arg))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _process(which, num_particles, num_iters, step_size, out_path, target_path):
  """Body of ``--process``: one whole run in this (fresh) process; saves the particles. The
  target's mixture comes from the parent (``target_path``): drawing the toy data set again
  would time its eager JAX ops (0.8 s), not the sampler."""
  with np.load(target_path) as stored:
    mixture = tuple(stored[k] for k in ("log_weights", "means", "covs"))
  log_density = mixture_log_density(mixture)
  if which == "ours":
    z0 = initial_particles(num_particles)
    z = ours_runner(log_density, step_size, num_iters)(z0)
  else:
    sampler = _numpyro_svgd(mixture, step_size, num_particles)
    result = sampler.run(jax.random.PRNGKey(0), num_iters, progress_bar=False)
    (z,) = result.params.values()
  np.save(out_path, np.asarray(z))


def _time_process(which, args, exact, mixture):
  """Wall time of a fresh process that runs the sampler (the MMD is computed here, after)."""
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a fresh process compiles from scratch
  with tempfile.TemporaryDirectory() as tmp:
    out_path, target_path = os.path.join(tmp, "particles.npy"), os.path.join(tmp, "target.npz")
    np.savez(target_path, **dict(zip(("log_weights", "means", "covs"),
                                     (np.asarray(a) for a in mixture))))
    cmd = [sys.executable, os.path.abspath(__file__), "--process", which, "--particles",
           str(args.particles), "--iters", str(args.iters), "--step-size", str(args.step_size),
           "--out", out_path, "--target", target_path]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
      raise RuntimeError(f"{which} process failed:\n{proc.stderr[-2000:]}")
    return wall, _mmd(jnp.asarray(np.load(out_path)), exact, mixture)


def compare(num_particles=100, num_iters=2000, step_size=1.0, repeats=3, processes=True):
  """The comparison as a dict (see the module docstring)."""
  args = argparse.Namespace(particles=num_particles, iters=num_iters, step_size=step_size)
  log_density, sample, mixture, info = target()
  z0 = initial_particles(num_particles)
  exact = sample(jax.random.PRNGKey(7), 2000)
  ours = ours_runner(log_density, step_size, num_iters)
  theirs, state0, particles_of = numpyro_runner(mixture, step_size, num_iters, z0)
  ours_s = _timed(ours, z0, repeats)
  theirs_s = _timed(theirs, state0, repeats)
  z_ours, z_theirs = ours(z0), particles_of(theirs(state0))
  result = {
      "target": "gmm bimodal exact posterior", **info,
      "num_particles": num_particles, "iterations": num_iters, "step_size": step_size,
      "ours_ms_per_iter": round(ours_s / num_iters * 1e3, 5),
      "numpyro_ms_per_iter": round(theirs_s / num_iters * 1e3, 5),
      "numpyro_over_ours": round(theirs_s / ours_s, 2),
      "ours_mmd": _mmd(z_ours, exact, mixture), "numpyro_mmd": _mmd(z_theirs, exact, mixture),
      "initial_mmd": _mmd(z0, exact, mixture),
      # the floor: an independent set of as many exact draws as particles
      "exact_draws_mmd": _mmd(sample(jax.random.PRNGKey(8), num_particles), exact, mixture),
      "max_particle_diff": float(jnp.max(jnp.abs(z_ours - z_theirs))),
  }
  if processes:
    ours_wall, ours_mmd = _time_process("ours", args, exact, mixture)
    theirs_wall, theirs_mmd = _time_process("numpyro", args, exact, mixture)
    result.update(ours_process_s=round(ours_wall, 3), numpyro_run_process_s=round(theirs_wall, 3),
                  ours_process_mmd=ours_mmd, numpyro_run_process_mmd=theirs_mmd)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--particles", type=int, default=100)
  parser.add_argument("--iters", type=int, default=2000)
  parser.add_argument("--step-size", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-processes", action="store_true",
                      help="skip the whole-run-as-a-process timings")
  parser.add_argument("--process", choices=("ours", "numpyro"), help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  parser.add_argument("--target", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.process:
    _process(args.process, args.particles, args.iters, args.step_size, args.out, args.target)
    return
  print(json.dumps({"benchmark": "svgd_gmm", **compare(args.particles, args.iters,
                                                        args.step_size, args.repeats,
                                                        not args.no_processes)}))


if __name__ == "__main__":
  main()
