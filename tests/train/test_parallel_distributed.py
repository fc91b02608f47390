"""``parallel.maybe_initialize_distributed`` off a cluster: one ConfigError saying how to launch,
not jax.distributed's ValueError traceback; two processes started by hand run like one."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dgm_jax.train import parallel
from dgm_jax.train.guards import ConfigError


def test_distributed_without_a_coordinator_is_a_config_error(monkeypatch):
  for name in list(os.environ):
    if name.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                        "OMPI_", "PMI_")):
      monkeypatch.delenv(name)
  with pytest.raises(ConfigError, match=r"distributed=True: jax.distributed.initialize\(\) "
                     r"failed .*launch the processes with Slurm"):
    parallel.maybe_initialize_distributed(True)


def test_a_single_process_run_initializes_nothing(monkeypatch):
  monkeypatch.delenv("SLURM_NTASKS", raising=False)
  parallel.maybe_initialize_distributed(False)  # no error, no coordinator wanted


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_evaluate_like_one(tmp_path):
  """Two jax.distributed processes on this machine (CPU collectives by gloo), started by
  hand with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, run the smoke VAE
  to the end and report what one process does. Both used to fail: jax.distributed does not
  read the last two variables ('Number of processes must be defined'), and the evaluation
  passed host batches to a jit sharded across processes."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  base = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
  base.pop("XLA_FLAGS", None)
  args = [sys.executable, "-m", "experiments.vae", "--config=configs/mnist.py:smoke"]
  single = subprocess.run(args + [f"--workdir={tmp_path / 'one'}"], cwd=repo, env=base,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      args + ["--config.distributed=True", f"--workdir={tmp_path / 'two'}"], cwd=repo,
      env=dict(base, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COORDINATOR_ADDRESS=address,
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  assert all("jax.distributed: process" in err for _, err in outputs)
  one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
  assert set(one) == set(two)
  for key in set(one) - {"wall_s", "eval_wall_s"}:
    if isinstance(one[key], float):
      np.testing.assert_allclose(two[key], one[key], rtol=1e-6, err_msg=key)
    else:
      assert two[key] == one[key], key
  rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
  assert len(rows) == len({(r["step"], r["split"]) for r in rows})  # written once, by process 0
