"""Data parallelism over all local devices with one jit and named shardings.

The batch is split along a ``data`` mesh axis; the train state is replicated.
``jax.jit`` with ``in_shardings``/``out_shardings`` lets XLA insert the
gradient all-reduce itself (DESIGN section 4); ``jax.pmap`` is not used.
Multi-host runs call :func:`maybe_initialize_distributed` first.
"""

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dgm_jax.train.guards import ConfigError

__all__ = [
    "make_mesh",
    "batch_sharding",
    "replicated_sharding",
    "block_sharding",
    "check_batch_divides",
    "shard_batch",
    "maybe_initialize_distributed",
    "BatchSplitError",
]

DATA_AXIS = "data"


class BatchSplitError(ValueError):
  """The global batch cannot be split evenly across the devices."""


def make_mesh(devices=None):
  """A 1-D mesh over ``devices`` (all devices by default) named ``data``."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh):
  """Sharding that splits the leading (batch) axis across the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def block_sharding(mesh):
  """Sharding of a ``[num_steps, B, ...]`` block of batches: split along B."""
  return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def replicated_sharding(mesh):
  """Sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_divides(batch_size, mesh, key="data.batch_size"):
  """Raises BatchSplitError unless ``batch_size`` (config key ``key``) splits across the mesh."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    lower = batch_size - batch_size % num_devices
    raise BatchSplitError(
        f"{key}={batch_size} does not split across {num_devices} devices; "
        f"set --config.{key} to a multiple of {num_devices} (e.g. {max(lower, num_devices)}).")


def shard_batch(batch, sharding):
  """Places a host batch (a dict of numpy arrays) on the devices, split by rows."""
  return jax.device_put(batch, sharding)


def maybe_initialize_distributed(enabled):
  """Starts multi-host JAX when asked to, or when Slurm launched several tasks.

  ``jax.distributed.initialize()`` reads the coordinator, process count and
  id from Slurm's environment by itself. Off a cluster, ``JAX_COORDINATOR_ADDRESS``
  (which JAX reads) with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (which it does not:
  they are passed here) start the processes by hand, e.g. several on one machine.
  """
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  if enabled or slurm_tasks > 1:
    by_hand = {name: int(os.environ[var]) for name, var in (
        ("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
               if os.environ.get(var, "").strip()}
    try:
      jax.distributed.initialize(**by_hand)
    except (ValueError, RuntimeError) as error:  # no coordinator found in the environment
      raise ConfigError(f"distributed=True: jax.distributed.initialize() failed "
                        f"({str(error).splitlines()[0][:200]}); launch the processes with Slurm "
                        "(srun), or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                        "JAX_PROCESS_ID; a single-host run needs no distributed=True") from None
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
