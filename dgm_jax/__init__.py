"""dgm_jax: deep generative models of Yunchen Pu's dissertation in JAX/Flax.

The package is layered as in `DESIGN.md`: pure math modules (``likelihoods``,
``bounds``, ``kernels``, ``svgd``, ``unpooling``, ``adversarial``, ``svm``,
``flows``) at the bottom, flax modules in ``nets``, methods in ``models``, and
the one generic training loop in ``train``.

Importing the package also sets one XLA flag for the CPU backend (see
:func:`_avoid_cpu_lapack_deadlock`) unless ``XLA_FLAGS`` already names it.
"""

import os

__version__ = "0.1.0"

CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def add_xla_flag(flag, value):
  """Appends ``flag=value`` to ``XLA_FLAGS`` unless ``XLA_FLAGS`` already names ``flag``
  (a value the user set is kept). XLA reads the variable when it first starts a backend."""
  flags = os.environ.get("XLA_FLAGS", "")
  if flag not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={value}".strip()


def _avoid_cpu_lapack_deadlock():
  """Appends ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to ``XLA_FLAGS``.

  On XLA:CPU (jaxlib 0.10.2, 2 cores) a program with two batched LAPACK calls that may
  run at once, such as ``slogdet`` beside the gradient of another ``slogdet`` (the
  change-of-variables log q and its entropy term in the Stein VIWAE step), can hang for
  good: each call splits its batch over the intra-op thread pool and waits for the
  pieces (``ParallelBatchMap``) while holding a pool thread, so two such calls on a
  two-thread pool wait on each other (gdb: both pool threads in ``BlockingCounter::Wait``,
  no CPU used). The concurrency-optimized scheduler lets XLA run such calls side by
  side; without it the same programs finish (``tests/test_cpu_runtime.py``). Other
  backends ignore the flag. XLA reads ``XLA_FLAGS`` when it first starts a backend, so
  this acts when dgm_jax is imported before the first computation (every launcher,
  benchmark and test does); a value the user set for the flag is kept.
  """
  add_xla_flag(CPU_SCHEDULER_FLAG, "false")


_avoid_cpu_lapack_deadlock()
