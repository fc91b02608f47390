"""Reading a finished run's workdir back in tests: its metric rows and checkpointed parameters."""

import json
import os


def read_metrics(workdir):
  """``metrics.jsonl`` rows without ``steps_per_second`` and ``train_seconds`` (the
  timing-dependent values)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop("steps_per_second", None)
    row.pop("train_seconds", None)
  return rows


def checkpoint_params(workdir, step):
  """The ``params`` of the orbax checkpoint at ``step``."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(workdir, "checkpoints", str(step), "default"))["params"]
