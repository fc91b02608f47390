"""Shared test configuration: hypothesis profiles, float64 for math checks, and one
persistent XLA compilation cache for the whole session.

Many tests launch the same smoke configs in fresh processes (the workdir contract,
resume after SIGKILL, early stopping, sweeps), and each would compile the same train and
evaluation steps again. The cache (``<repo>/.jax_cache``, or ``JAX_COMPILATION_CACHE_DIR``
when set; ``DGM_JAX_TEST_JIT_CACHE=0`` turns it off) is inherited by those processes
through the environment; a size limit makes JAX lock the directory (``filelock``), so
the two xdist workers and their children can share it. A cached executable is the one
XLA would compile, so no result changes.

Heavy modules run first (``pytest_collection_modifyitems``, from ``tests/durations.json``),
so that ``pytest -n 2`` does not end on one worker's long test while the other waits.

In-process tests compile at XLA's optimization level 0 (``DGM_JAX_TEST_XLA_OPT``; see
``_compile_in_process_tests_unoptimized``); the launcher processes compile at the default.

``DGM_JAX_TEST_PIN=1`` pins each ``pytest -n N`` worker to its own cores (see
``_pin_xdist_worker_to_its_own_cores``; off by default).
"""

import json
import os

import hypothesis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("DGM_JAX_TEST_JIT_CACHE", "1") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))


def _pin_xdist_worker_to_its_own_cores():
  """With ``DGM_JAX_TEST_PIN=1``, gives each xdist worker (and the launcher processes it
  starts, which inherit the affinity) its own share of the cores, before XLA sizes its
  thread pools from them. Off by default.

  Unpinned, each worker's XLA runs as many threads as the machine has cores. Beside one
  more busy process on 2 cores, the VIWAE tail-dynamics test took 557 s unpinned and 48 s
  pinned (18 s alone on one core); on an otherwise idle machine the whole suite was slower
  pinned (38 min for ``.ci/run`` against 27 min), since a pinned worker cannot borrow
  the other's idle core. With fewer cores than workers nothing is pinned."""
  worker = os.environ.get("PYTEST_XDIST_WORKER", "")
  count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
  if (not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity")
      or os.environ.get("DGM_JAX_TEST_PIN", "0") != "1"):
    return
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < count:
    return
  os.sched_setaffinity(0, cores[int(worker[2:]) % count::count])


_pin_xdist_worker_to_its_own_cores()

import dgm_jax  # noqa: E402  (imports no jax: its XLA:CPU flag, dgm_jax/__init__.py, acts later)


def _compile_in_process_tests_unoptimized():
  """The tests in this process compile at XLA's optimization level 0 (``DGM_JAX_TEST_XLA_OPT``,
  default ``0``; ``default`` keeps XLA's own level; a level the user put in ``XLA_FLAGS`` wins).

  Most in-process tests run a jitted step or two on small arrays, so compiling is most of
  their time: ``tests/models/test_asvae.py`` took 326 s with XLA's default level and 164 s
  at level 0 (``pytest -n 2``, empty compilation caches). The level changes how XLA:CPU
  optimizes the program, not what it computes; results differ by float rounding only. The
  launcher processes the tests start drop ``XLA_FLAGS`` (each test's ``env.pop``; the
  multi-device ones set only the device count), so every end-to-end run, and the toys'
  acceptance runs, compile at XLA's default level as a user's run does."""
  level = os.environ.get("DGM_JAX_TEST_XLA_OPT", "0")
  if level not in ("default", "0", "1", "2", "3"):
    raise ValueError(f"DGM_JAX_TEST_XLA_OPT={level!r}: expected an XLA level 0-3 or 'default'")
  if level != "default":
    dgm_jax.add_xla_flag("--xla_backend_optimization_level", level)


_compile_in_process_tests_unoptimized()

import jax  # noqa: E402  (after the cache's environment variables, which jax reads on import)

assert dgm_jax.CPU_SCHEDULER_FLAG in os.environ["XLA_FLAGS"]

jax.config.update("jax_enable_x64", True)

hypothesis.settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile(
    "dev", max_examples=40, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile(
    "thorough", max_examples=300, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
  """Orders the test modules by their measured seconds, heaviest first; a module's tests stay
  together and in their order (so a module-scoped fixture is not set up again in between).

  ``tests/durations.json`` holds the seconds (setup and call) of every test that took at least
  1 s in one ``pytest -n 2 --durations=0`` run from empty compilation caches (2026-12-07;
  refresh it the same way); modules it does not name
  go last, in their usual order. xdist hands the first quarter of the tests to the
  workers one at a time in this order, so each worker starts on a share of the long ones
  and the run ends on short tests. Order only: stale figures change no result."""
  del config
  path = os.path.join(REPO, "tests", "durations.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    seconds = json.load(f)
  module_seconds = {}
  for node, value in seconds.items():
    module = node.split("::", 1)[0]
    module_seconds[module] = module_seconds.get(module, 0.0) + float(value)
  items.sort(key=lambda item: -module_seconds.get(item.nodeid.split("::", 1)[0], 0.0))
