"""``parallel.maybe_initialize_distributed`` off a cluster: one ConfigError saying how to launch,
not jax.distributed's ValueError traceback."""

import os

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
