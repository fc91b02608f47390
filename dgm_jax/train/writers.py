"""Metric writers: ``metrics.jsonl`` always, TensorBoard events, and a log line.

Metrics arrive as flat dicts of scalars; the writer adds the split and step,
so models never format names themselves (DESIGN section 4). Every file is strict
JSON: a NaN or infinite value is written as ``null`` (Python's ``NaN`` / ``Infinity``
tokens are not JSON, and ``jq`` or a browser stops at them). In a multi-process run
(``jax.distributed``, one process per host) only process 0 writes files
(``is_primary``); every process computes the same values.
"""

import json
import math
import os
import time

import numpy as np
from absl import logging

__all__ = ["MetricWriter", "ProgressLine", "write_json", "write_npz", "as_json", "strict_json",
           "is_primary"]


def is_primary():
  """Whether this process writes the workdir's files: process 0 of a multi-process run
  (every process of a ``jax.distributed`` run would otherwise append each metrics row and
  race on the same files), the only process otherwise."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


class MetricWriter:
  """Appends ``{"step", "split", name: value}`` lines and TensorBoard scalars.

  The TensorBoard event file opens at the first write, so that a resumed run's file
  (after ``truncate_after``) can tell TensorBoard to hide the older files' events past
  the resumed step, which the run writes again.

  The splits in ``replaced_splits`` (the test split: each final evaluation writes it anew,
  also at a step before the resumed one under early stopping, or again on a re-run of a
  finished run) go to their own TensorBoard run, ``tensorboard/<split>``, whose older event
  files are removed when the next evaluation writes (its file also carries a purge marker at
  step 0): TensorBoard shows the last evaluation only, as ``metrics.jsonl`` does.
  """

  def __init__(self, workdir, tensorboard=True, replaced_splits=("test",)):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
    self._tb, self._purge_step = None, None
    self._replaced = {split: None for split in replaced_splits}  # split -> its own writer
    self._primary = is_primary()

  def write(self, step, split, metrics):
    if not self._primary:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _finite_or_none(float(v)) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record, allow_nan=False) + "\n")
    if self._tb_dir is not None:
      for name, value in metrics.items():
        self._tensorboard(split).add_scalar(f"{split}/{name}", float(value), int(step))

  def _tensorboard(self, split):
    """The TensorBoard writer of ``split``'s scalars, opened at its first use."""
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    if split in self._replaced:
      if self._replaced[split] is None:
        directory = os.path.join(self._tb_dir, split)
        # The older evaluations' files go (the purge marker alone would hide them, where a
        # TensorBoard reads it).
        if os.path.isdir(directory):
          for name in os.listdir(directory):
            if os.path.isfile(os.path.join(directory, name)):
              os.remove(os.path.join(directory, name))
        self._replaced[split] = SummaryWriter(directory, purge_step=0)
      return self._replaced[split]
    if self._tb is None:
      self._tb = SummaryWriter(self._tb_dir, purge_step=self._purge_step)
    return self._tb

  def truncate_after(self, step, drop_splits=()):
    """Drops lines past ``step`` (a resumed run rewrites them identically) and every line
    of the splits in ``drop_splits``; TensorBoard hides the events past ``step`` too (a
    purge marker at ``step + 1`` in the next event file: tensorboardX's ``purge_step``)."""
    if self._tb is None:
      self._purge_step = int(step) + 1
    if not self._primary or not os.path.exists(self.path):
      return
    def keep(record):
      return record.get("step", step + 1) <= step and record.get("split") not in drop_splits
    lines = [line for line, record in self._records() if keep(record)]
    with open(self.path, "w") as f:
      f.writelines(lines)

  def last_value(self, split, name, default=0.0):
    """The newest value of metric ``name`` in ``split``'s rows, or ``default``."""
    value = default
    for _, record in self._records():
      if record.get("split") == split and name in record:
        value = record[name]
    return value

  def _records(self):
    """``(line, row)`` of each row of ``metrics.jsonl`` (none if it is absent). A line that
    is not a JSON object, such as the last one of a run killed while writing it, is dropped
    with a warning: the resumed run writes the rows after its checkpoint again."""
    if not os.path.exists(self.path):
      return []
    records = []
    with open(self.path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          record = None
        if isinstance(record, dict):
          records.append((line if line.endswith("\n") else line + "\n", record))
        else:
          logging.warning("%s line %d is not a metrics row (%r...); dropped", self.path, number,
                          line[:60])
    return records

  def close(self):
    for writer in (self._tb, *self._replaced.values()):
      if writer is not None:
        writer.close()


class ProgressLine:
  """Logs ``step, steps/s, ETA`` and the main metrics at a steady cadence."""

  def __init__(self, start_step, num_steps, unit="steps", every_s=None):
    self._num_steps = num_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._unit, self._every_s = unit, every_s
    self._start_step, self._start_time = start_step, self._last_time

  def maybe_log(self, done, label):
    """Logs ``label done/total, rate, ETA`` at most every ``every_s`` seconds."""
    now = time.perf_counter()
    if self._every_s is None or now - self._last_time < self._every_s:
      return
    self._last_time = now
    rate = (done - self._start_step) / max(now - self._start_time, 1e-9)
    eta_s = (self._num_steps - done) / max(rate, 1e-9)
    logging.info("%s: %d/%d %s  %.1f %s/s  ETA %s", label, done, self._num_steps, self._unit,
                 rate, self._unit, _format_seconds(eta_s))

  def restart(self, step):
    """Restarts the rate clock (after an evaluation pause)."""
    self._last_step, self._last_time = step, time.perf_counter()

  def log(self, step, metrics):
    """Logs the line; returns the rate since the last line or ``restart`` (NaN when no step
    was timed: a row at the step the clock restarted at)."""
    now = time.perf_counter()
    if step > self._last_step:
      rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
      speed = f"{rate:.1f} steps/s  ETA {_format_seconds((self._num_steps - step) / rate)}"
    else:
      rate, speed = float("nan"), "rate after the next row"
    self._last_step, self._last_time = step, now
    shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    logging.info("step %d/%d  %s  %s", step, self._num_steps, speed, shown)
    return rate


def write_json(path, obj):
  """Writes ``obj`` as indented JSON, atomically; numpy / jax arrays and scalars become lists.
  Only the primary process writes (``is_primary``)."""
  if not is_primary():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(strict_json(obj), f, indent=2, sort_keys=True, allow_nan=False)
  os.replace(tmp, path)


def as_json(obj):
  """``obj`` as ``write_json`` stores it and ``json.load`` reads it back (tuples become
  lists, arrays lists), for comparing a config with a stored ``config.json``."""
  return json.loads(json.dumps(strict_json(obj), allow_nan=False))


def write_npz(path, arrays):
  """Writes a dict of arrays as ``.npz`` at exactly ``path``, atomically (as ``write_json``)."""
  if not is_primary():
    return
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
    np.savez(f, **arrays)
  os.replace(tmp, path)


def strict_json(obj):
  """``obj`` with dicts and sequences as dicts and lists, arrays and numpy scalars as
  (nested lists of) Python numbers, NaN and infinities as None, other objects as ``str``."""
  if isinstance(obj, dict):
    return {key if isinstance(key, str) else str(key): strict_json(value)
            for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(value) for value in obj]
  if isinstance(obj, np.generic) or hasattr(obj, "__array__"):
    return strict_json(np.asarray(obj).tolist())
  if isinstance(obj, float):
    return _finite_or_none(obj)
  if obj is None or isinstance(obj, (str, int)):  # bool is an int
    return obj
  return str(obj)


def _finite_or_none(value):
  return value if math.isfinite(value) else None


def _format_seconds(seconds):
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
