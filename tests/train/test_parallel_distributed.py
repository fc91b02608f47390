"""``parallel.maybe_initialize_distributed`` off a cluster: one ConfigError saying how to launch,
not jax.distributed's ValueError traceback; two processes started by hand run, are killed and
resume like one uninterrupted process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

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


def _two_processes(args, workdir, env):
  """Starts the two jax.distributed processes of one run (CPU collectives by gloo)."""
  address = f"localhost:{_free_port()}"
  return [subprocess.Popen(
      args + ["--config.distributed=True", f"--workdir={workdir}"], cwd=env["PYTHONPATH"],
      env=dict(env, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COORDINATOR_ADDRESS=address,
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs):
  outputs = [p.communicate(timeout=600) for p in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  return [err for _, err in outputs]


def test_two_processes_train_killed_and_resumed_end_like_one(tmp_path):
  """Two jax.distributed processes on this machine, started by hand with
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, run the smoke VAE, are
  killed (SIGKILL, both) after their first checkpoint, are started again, resume from it, and
  report what one uninterrupted process does. The first two used to fail: jax.distributed does
  not read the last two variables ('Number of processes must be defined'), and the
  evaluation passed host batches to a jit sharded across processes."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  base = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
  base.pop("XLA_FLAGS", None)
  args = [sys.executable, "-m", "experiments.vae", "--config=configs/mnist.py:smoke",
          "--config.train.num_steps=300", "--config.train.ckpt_every=100",
          "--config.train.eval_every=300", "--config.train.log_every=50"]
  single = subprocess.run(args + [f"--workdir={tmp_path / 'one'}"], cwd=repo, env=base,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  procs = _two_processes(args, tmp_path / "two", base)
  first_ckpt = tmp_path / "two" / "checkpoints" / "100"
  deadline = time.time() + 300
  while (not first_ckpt.exists() and time.time() < deadline
         and all(p.poll() is None for p in procs)):
    time.sleep(0.01)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
  outputs = [p.communicate() for p in procs]
  assert all(p.returncode == -signal.SIGKILL for p in procs), [e[-3000:] for _, e in outputs]
  assert first_ckpt.exists() and not (tmp_path / "two" / "results.json").exists()

  errs = _finish(_two_processes(args, tmp_path / "two", base))
  assert all("jax.distributed: process" in err for err in errs)
  assert all("Resuming from the checkpoint" in err for err in errs), errs[0][-3000:]
  one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
  assert set(one) == set(two)
  for key in set(one) - {"wall_s", "eval_wall_s"}:
    if isinstance(one[key], float):
      np.testing.assert_allclose(two[key], one[key], rtol=1e-6, err_msg=key)
    else:
      assert two[key] == one[key], key
  rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
  assert len(rows) == len({(r["step"], r["split"]) for r in rows})  # written once, by process 0
  assert [r["step"] for r in rows if r["split"] == "train"] == [50, 100, 150, 200, 250, 300]
