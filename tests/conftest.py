"""Shared test configuration: hypothesis profiles, float64 for math checks, and one
persistent XLA compilation cache for the whole session.

Many tests launch the same smoke configs in fresh processes (the workdir contract,
resume after SIGKILL, early stopping, sweeps), and each would compile the same train and
evaluation steps again. The cache (``<repo>/.jax_cache``, or ``JAX_COMPILATION_CACHE_DIR``
when set; ``DGM_JAX_TEST_JIT_CACHE=0`` turns it off) is inherited by those processes
through the environment; a size limit makes JAX lock the directory (``filelock``), so
the two xdist workers and their children can share it. A cached executable is the one
XLA would compile, so no result changes.

Under ``pytest -n N`` each worker is pinned to its own cores (see
``_pin_xdist_worker_to_its_own_cores``).
"""

import os

import hypothesis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("DGM_JAX_TEST_JIT_CACHE", "1") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))


def _pin_xdist_worker_to_its_own_cores():
  """Gives each xdist worker (and the launcher processes it starts, which inherit the
  affinity) its own share of the cores, before XLA sizes its thread pools from them.

  Unpinned, each worker's XLA ran as many threads as the machine has cores, and the
  workers' pools fought over them: on 2 cores, in a ``pytest -n 2`` run beside one more
  busy process, the VIWAE tail-dynamics test took 557 s; pinned, beside the same process,
  48 s (18 s alone on one core). ``DGM_JAX_TEST_PIN=0`` turns
  the pinning off; with fewer cores than workers nothing is pinned."""
  worker = os.environ.get("PYTEST_XDIST_WORKER", "")
  count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
  if (not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity")
      or os.environ.get("DGM_JAX_TEST_PIN", "1") == "0"):
    return
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < count:
    return
  os.sched_setaffinity(0, cores[int(worker[2:]) % count::count])


_pin_xdist_worker_to_its_own_cores()

import jax  # noqa: E402  (after the cache's environment variables, which jax reads on import)

jax.config.update("jax_enable_x64", True)

hypothesis.settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile(
    "dev", max_examples=40, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile(
    "thorough", max_examples=300, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
