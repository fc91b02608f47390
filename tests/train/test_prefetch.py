"""``loop.prefetch_block_steps``: a block of prefetched batches stays under its byte budget;
``loop.default_workdir``: runs started in the same second get folders of their own."""

import types

import numpy as np
import pytest

from dgm_jax.train import guards, loop


def _data(shape, dtype=np.float32):
  return types.SimpleNamespace(splits={"train": np.zeros((2,) + shape, dtype)})


def test_default_blocks_keep_their_length_and_huge_batches_shrink_them():
  mnist = _data((28, 28, 1))
  assert loop.prefetch_block_steps(50, 100, mnist) == 50  # 0.3 MB a step
  step_bytes = 100_000 * 784 * 4  # the batch that was killed for memory, 50 at once
  assert step_bytes > loop.PREFETCH_BYTES and loop.prefetch_block_steps(50, 100_000, mnist) == 1
  budget_steps = loop.PREFETCH_BYTES // (5_000 * 784 * 4)
  assert 1 < budget_steps < 50
  assert loop.prefetch_block_steps(50, 5_000, mnist) == budget_steps
  assert budget_steps * 5_000 * 784 * 4 <= loop.PREFETCH_BYTES


def test_default_workdirs_of_runs_started_together_differ(monkeypatch):
  """Three seeds started by one shell loop in the same second used to share one folder."""
  names = set()
  for pid in (101, 102, 103):
    monkeypatch.setattr(loop.os, "getpid", lambda pid=pid: pid)
    monkeypatch.setattr(loop.time, "strftime", lambda fmt: "20261206-120000")
    names.add(loop.default_workdir("vae", "mnist"))
  assert names == {f"runs/vae_mnist_20261206-120000-{pid}" for pid in (101, 102, 103)}


def test_a_multi_process_run_without_a_workdir_is_one_error(monkeypatch):
  """Each process would name its default folder by its own clock and process id."""
  monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
  with pytest.raises(guards.ConfigError, match="a run of 2 processes needs --workdir"):
    loop.default_workdir("vae", "mnist")
