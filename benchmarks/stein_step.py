"""Times the Stein VAE train step against M and against its floor, the decoder scores.

Prints one JSON line: for M in (10, 20, 50, 100) particles per example, the
seconds per jitted Stein VAE train step on MNIST-shaped data (batch 64, the
architecture of 4.5.2), for each value of ``stein_vae.kernel`` (the coordinatewise
kernel with all M particles only) and of ``stein_vae.preconditioner`` (``gauss_newton``
with the RBF kernel and all M particles only), the seconds of the decoder scores alone
(``grad_z log p(x, z)`` for the same B x M codes: the part no implementation of this
algorithm can skip), and their ratio, all measured in the same run with interleaved
repeats. The plain RBF step is timed for each pair of ``--subsets``
(``decoder_grad_particles:encoder_fit_particles``, 0 meaning all M): the gradients of
(4.1) and (4.13) estimated from the first m of the exchangeable particles, unbiased and
noisier. ``step_over_scores_flops`` is the same ratio in the
floating-point operations XLA's cost analysis counts in the two compiled functions:
the time ratio a step would have if both ran at the same FLOP rate. The count is a
lower bound on the step's: XLA counts a loop body once, not once per iteration (the
bisection median's 32 passes, the scan of ``encoder_steps > 1``), and a custom call
such as the CPU Cholesky of the preconditioned step not at all. So it is meant for the
RBF rows without a preconditioner, whose only loop is the bandwidth's median. Then, under
``svgd_vs_numpyro``, our SVGD against numpyro's on the bimodal toy posterior
(``benchmarks/svgd_gmm.py``).

  python benchmarks/stein_step.py [--particles 10,20,50,100 --batch 64 --repeats 10
                                   --subsets 0:0,10:0,1:10 --kernels rbf,coordinatewise
                                   --preconditioners none,gauss_newton --svgd-no-processes]
"""

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import mnist
from dgm_jax import likelihoods
from dgm_jax.data import transforms
from dgm_jax.models import stein_vae
from dgm_jax.models.base import DataSpec
from dgm_jax.nets.mlp import MLP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgd_gmm  # noqa: E402  pylint: disable=wrong-import-position


def build(num_particles, batch_size, grad_particles=0, kernel="rbf", preconditioner="none",
          fit_particles=0):
  config = mnist.get_config()
  config.stein_vae.kernel = kernel
  config.stein_vae.preconditioner = preconditioner
  config.data.batch_size = batch_size
  config.stein_vae.num_particles = num_particles
  config.stein_vae.decoder_grad_particles = grad_particles
  config.stein_vae.encoder_fit_particles = fit_particles
  spec = DataSpec(shape=(28, 28, 1), kind="grayscale8", num_train=50_000)
  method = stein_vae.make_method(config, spec)
  batch = {"x": jax.random.uniform(jax.random.PRNGKey(0), (batch_size, 28, 28, 1)),
           "index": jnp.arange(batch_size, dtype=jnp.int32)}
  state = jax.jit(method.init)(jax.random.PRNGKey(1), batch)
  step = jax.jit(method.train_step)
  section = config.stein_vae
  decoder = MLP(tuple(section.decoder_hidden), 784, section.activation)
  theta = state.params["decoder"]

  @jax.jit
  def scores_only(x, z):
    def log_joint(c):  # the model's own terms, one decoder pass
      log_px = likelihoods.bernoulli_log_prob(x[:, None, :], decoder.apply(theta, c)).sum(-1)
      return log_px + likelihoods.gaussian_log_prob(c, 0.0, 0.0).sum(-1)
    return stein_vae.latent_scores(log_joint, z)[1]

  x = transforms.fixed_binarize(batch["x"].reshape(batch_size, -1))
  z = jax.random.normal(jax.random.PRNGKey(2), (batch_size, num_particles, section.latent_dim))
  step_args, scores_args = (state, batch, jax.random.PRNGKey(3)), (x, z)
  # Compiled once, ahead of time: the same executables are timed and costed.
  step_exe = step.lower(*step_args).compile()
  scores_exe = scores_only.lower(*scores_args).compile()
  return ((lambda: step_exe(*step_args)), (lambda: scores_exe(*scores_args)),
          compiled_flops(step_exe) / compiled_flops(scores_exe))


def timed_setting(kernel, grad_particles, fit_particles, preconditioner):
  """Which settings get a row: every gradient subset for the plain RBF step; the
  coordinatewise kernel and the preconditioner (RBF only) with all particles."""
  if kernel == "rbf" and preconditioner == "none":
    return True
  all_particles = grad_particles == fit_particles == 0
  return all_particles and (kernel == "rbf" or preconditioner == "none")


def compiled_flops(compiled):
  """The floating-point operations XLA's cost analysis counts in one call of ``compiled``
  (``jax.jit(f).lower(*args).compile()``)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # one entry per computation in older jax
    cost = cost[0]
  return float(cost["flops"])


def timed(fn):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--particles", default="10,20,50,100")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--subsets", default="0:0,10:0,1:10",
                      help="pairs decoder_grad_particles:encoder_fit_particles to time with the "
                           "RBF kernel (0: all M)")
  parser.add_argument("--kernels", default="rbf,coordinatewise",
                      help="values of stein_vae.kernel to time")
  parser.add_argument("--preconditioners", default="none,gauss_newton",
                      help="values of stein_vae.preconditioner to time")
  parser.add_argument("--svgd-particles", type=int, default=100)
  parser.add_argument("--svgd-iters", type=int, default=2000)
  parser.add_argument("--no-numpyro", action="store_true",
                      help="skip the comparison with numpyro's SVGD")
  parser.add_argument("--svgd-no-processes", action="store_true",
                      help="skip the comparison's whole-run-as-a-process timings")
  args = parser.parse_args()
  rows = []
  subsets = [tuple(map(int, pair.split(":"))) for pair in args.subsets.split(",")]
  settings = [(kernel, grads, fits, preconditioner)
              for kernel in args.kernels.split(",")
              for grads, fits in subsets
              for preconditioner in args.preconditioners.split(",")
              if timed_setting(kernel, grads, fits, preconditioner)]
  for num_particles in map(int, args.particles.split(",")):
    for kernel, grad_particles, fit_particles, preconditioner in settings:
      if max(grad_particles, fit_particles) > num_particles:
        continue
      step_fn, scores_fn, flops_ratio = build(num_particles, args.batch, grad_particles, kernel,
                                              preconditioner, fit_particles)
      timed(step_fn), timed(scores_fn)  # warm up
      step_s, scores_s = [], []
      for _ in range(args.repeats):
        step_s.append(timed(step_fn))
        scores_s.append(timed(scores_fn))
      step_med, scores_med = float(np.median(step_s)), float(np.median(scores_s))
      rows.append({"num_particles": num_particles, "kernel": kernel,
                   "preconditioner": preconditioner,
                   "decoder_grad_particles": grad_particles,
                   "encoder_fit_particles": fit_particles,
                   "step_ms": round(step_med * 1e3, 3),
                   "decoder_scores_ms": round(scores_med * 1e3, 3),
                   "step_over_scores": round(step_med / scores_med, 3),
                   "step_over_scores_flops": round(flops_ratio, 3)})
  comparison = None
  if not args.no_numpyro:
    comparison = svgd_gmm.compare(args.svgd_particles, args.svgd_iters,
                                  processes=not args.svgd_no_processes)
  print(json.dumps({"benchmark": "stein_step", "batch": args.batch, "rows": rows,
                    "svgd_vs_numpyro": comparison,
                    "backend": jax.default_backend(), "jax": jax.__version__,
                    "machine": platform.machine()}))


if __name__ == "__main__":
  main()
