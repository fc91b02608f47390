"""The XLA:CPU setting dgm_jax makes on import (``dgm_jax._avoid_cpu_lapack_deadlock``).

Two batched LAPACK calls that XLA may run side by side (``slogdet`` beside the gradient of
another, as in the Stein VIWAE step) hung for good on this 2-core machine with jaxlib
0.10.2's defaults, idle or beside a busy process: both intra-op pool threads waited in ``ParallelBatchMap``
for pieces only they could run. The program below is that pattern, run in a fresh process
(XLA reads ``XLA_FLAGS`` once, when the backend starts). With the package's flag it takes
about 2 s; with ``DGM_JAX_TEST_KEEP_DEFAULT_SCHEDULER=1`` (the flag set back to XLA's
default) it hangs until the timeout (``DGM_JAX_TEST_TIMEOUT``, 240 s), which is how this
test was checked to fail.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import dgm_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import os
    if os.environ.get("DGM_JAX_TEST_KEEP_DEFAULT_SCHEDULER") == "1":
      os.environ["XLA_FLAGS"] = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    import dgm_jax
    import jax, jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (160, 50, 50)) + 5 * jnp.eye(50)

    def step(a, _):
      log_det = jnp.linalg.slogdet(a)[1]
      grad = jax.grad(lambda m: jnp.sum(jnp.linalg.slogdet(m)[1]))(1.001 * a)
      return a + 1e-6 * grad + 1e-6 * log_det[:, None, None], jnp.mean(log_det)

    _, log_dets = jax.jit(lambda a: jax.lax.scan(step, a, None, length=50))(a)
    print(os.environ["XLA_FLAGS"])
    print(float(log_dets[0]), float(log_dets[-1]))
""")


def run_program(timeout):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # (DGM_JAX_TEST_KEEP_DEFAULT_SCHEDULER passes through: docstring)
  return subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env, text=True,
                        capture_output=True, timeout=timeout)


def test_two_batched_lapack_calls_side_by_side_finish():
  timeout = int(os.environ.get("DGM_JAX_TEST_TIMEOUT", "240"))
  try:
    proc = run_program(timeout)
  except subprocess.TimeoutExpired:
    pytest.fail(f"slogdet beside the gradient of slogdet hung on XLA:CPU ({timeout} s)")
  assert proc.returncode == 0, proc.stderr[-2000:]
  flags, log_dets = proc.stdout.split("\n")[-3:-1]
  assert flags == f"{dgm_jax.CPU_SCHEDULER_FLAG}=false"
  first, last = map(float, log_dets.split())
  # log|det(5 I + N)| of 50 x 50 standard normal N is about 84; 50 steps of 1e-6 barely move it.
  assert 70 < first < 100 and last == pytest.approx(first, rel=1e-2)


@pytest.mark.parametrize("given,expected", [
    ("--xla_force_host_platform_device_count=4",
     f"--xla_force_host_platform_device_count=4 {dgm_jax.CPU_SCHEDULER_FLAG}=false"),
    (f"{dgm_jax.CPU_SCHEDULER_FLAG}=true", f"{dgm_jax.CPU_SCHEDULER_FLAG}=true"),
    ("", f"{dgm_jax.CPU_SCHEDULER_FLAG}=false"),
])
def test_the_flag_joins_the_users_flags_and_keeps_their_own_value(monkeypatch, given, expected):
  monkeypatch.setenv("XLA_FLAGS", given)
  dgm_jax._avoid_cpu_lapack_deadlock()  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"] == expected
