"""``optimized_jit``: ``jax.jit`` at XLA's own optimization level, for the few in-process tests
whose programs run long or often (scans of 600 to 2,000 steps, a bisection's 22 calls).

``tests/conftest.py`` compiles every other in-process test at level 0, where compiling is
most of a test's time. A long program runs slower there (a 300-step scan of 64 x 64 matmuls:
19.6 against 9.5 ms), so these programs ask for XLA's default level (3, ``DefaultDebugOptions``)
through ``compiler_options``, which overrides ``XLA_FLAGS`` for one program.
"""

import functools

import jax

XLA_DEFAULT_LEVEL = 3

optimized_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": XLA_DEFAULT_LEVEL})
