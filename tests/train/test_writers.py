"""``dgm_jax.train.writers``: the workdir's files are written whole, at the names asked for."""
import json
import os
import time

import numpy as np

from dgm_jax.train import writers


def test_write_npz_writes_exactly_the_path_and_replaces_a_previous_file(tmp_path):
  path = str(tmp_path / "decoder_nll_per_image.npz")
  writers.write_npz(path, {"own": np.arange(3.0), "laplace": np.ones(3)})
  writers.write_npz(path, {"own": np.array([95.5, 93.25]), "laplace": np.zeros(2)})
  assert sorted(os.listdir(tmp_path)) == ["decoder_nll_per_image.npz"]  # no .tmp, no .npz.npz
  saved = np.load(path)
  np.testing.assert_array_equal(saved["own"], [95.5, 93.25])
  np.testing.assert_array_equal(saved["laplace"], [0.0, 0.0])


def _read_events(path):
  """The Event protos of one TFRecord file (length, crc, data, crc; crcs unchecked)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  events = []
  with open(path, "rb") as f:
    while header := f.read(12):
      length = int.from_bytes(header[:8], "little")
      event = event_pb2.Event()
      event.ParseFromString(f.read(length))
      f.read(4)
      events.append(event)
  return events


def _scalars_as_tensorboard_shows_them(tb_dir):
  """TensorBoard's reading of a run's event files: in name order (their start time), a
  SessionLog START at step s hides every event read so far at step >= s. A sub-folder is
  another run, not read here."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  shown = []  # (tag, step, value)
  for name in sorted(os.listdir(tb_dir)):
    if os.path.isdir(os.path.join(tb_dir, name)):  # a run of its own
      continue
    for event in _read_events(os.path.join(tb_dir, name)):
      if event.session_log.status == event_pb2.SessionLog.START:
        shown = [row for row in shown if row[1] < event.step]
      for value in event.summary.value:
        shown.append((value.tag, event.step, value.simple_value))
  return sorted(shown)


def test_a_resumed_writer_hides_the_tensorboard_events_it_writes_again(tmp_path):
  """A run killed after step 4 whose checkpoint is at step 2 resumes at step 3: the rows
  of steps 3 and 4 in metrics.jsonl and TensorBoard are the resumed run's alone."""
  first = writers.MetricWriter(str(tmp_path))
  first.truncate_after(0)  # a run from step 0
  for step in range(1, 5):
    first.write(step, "train", {"loss": float(step)})
  first.close()
  time.sleep(1.1)  # event files are named by their start second
  resumed = writers.MetricWriter(str(tmp_path))
  resumed.truncate_after(2, drop_splits=("test",))
  for step in range(3, 6):
    resumed.write(step, "train", {"loss": 10.0 * step})
  resumed.close()
  expected = [("train/loss", 1, 1.0), ("train/loss", 2, 2.0), ("train/loss", 3, 30.0),
              ("train/loss", 4, 40.0), ("train/loss", 5, 50.0)]
  assert len(os.listdir(tmp_path / "tensorboard")) == 2
  assert _scalars_as_tensorboard_shows_them(str(tmp_path / "tensorboard")) == expected
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [("train/loss", r["step"], r["loss"]) for r in rows] == expected


def test_the_test_split_is_a_tensorboard_run_that_shows_the_last_evaluation_only(tmp_path):
  """A finished run re-run (or resumed under early stopping) writes its test row again, at
  the same or another step: TensorBoard shows that row once, as metrics.jsonl does, and the
  training rows stay where they were."""
  first = writers.MetricWriter(str(tmp_path))
  first.truncate_after(0)
  for step in (1, 2):
    first.write(step, "train", {"loss": float(step)})
  first.write(2, "test", {"nll_nats": 90.0})
  first.close()
  time.sleep(1.1)  # event files are named by their start second
  again = writers.MetricWriter(str(tmp_path))
  again.truncate_after(2, drop_splits=("test",))
  again.write(1, "test", {"nll_nats": 91.0})  # e.g. the best validated state of step 1
  again.close()
  tb = tmp_path / "tensorboard"
  assert _scalars_as_tensorboard_shows_them(str(tb / "test")) == [("test/nll_nats", 1, 91.0)]
  assert len(os.listdir(tb / "test")) == 1  # the first evaluation's file is gone
  assert _scalars_as_tensorboard_shows_them(str(tb)) == [("train/loss", 1, 1.0), ("train/loss", 2, 2.0)]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["split"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("test", 1)]


def test_only_process_zero_writes_files(tmp_path, monkeypatch):
  """In a multi-process run every process computes the metrics; process 0 alone writes
  them (each process used to append every row, and raced on the same .tmp files)."""
  import jax  # pylint: disable=import-outside-toplevel
  primary = writers.MetricWriter(str(tmp_path), tensorboard=False)
  primary.write(1, "train", {"loss": 1.0})
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  other = writers.MetricWriter(str(tmp_path), tensorboard=True)
  other.write(1, "train", {"loss": 1.0})
  other.truncate_after(0)
  other.close()
  writers.write_json(str(tmp_path / "results.json"), {"a": 1})
  writers.write_npz(str(tmp_path / "arrays.npz"), {"a": np.zeros(2)})
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1]
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  writers.write_json(str(tmp_path / "results.json"), {"a": 1})
  assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}


def test_a_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
  """A run killed while appending a row leaves half a line: the resumed writer drops it (and
  rows past its checkpoint) instead of stopping on a JSONDecodeError, and keeps the rest
  byte for byte."""
  first = writers.MetricWriter(str(tmp_path), tensorboard=False)
  for step in range(1, 4):
    first.write(step, "train", {"loss": float(step)})
  path = tmp_path / "metrics.jsonl"
  whole = path.read_text()
  with open(path, "a") as f:
    f.write('{"step": 4, "split": "tra')
  resumed = writers.MetricWriter(str(tmp_path), tensorboard=False)
  assert resumed.last_value("train", "loss") == 3.0
  resumed.truncate_after(2)
  assert path.read_text() == "".join(whole.splitlines(keepends=True)[:2])
  resumed.write(3, "train", {"loss": 30.0})
  assert [json.loads(line)["loss"] for line in open(path)] == [1.0, 2.0, 30.0]


def _strict_load(text):
  """json.loads that refuses Python's NaN / Infinity tokens, as jq and browsers do."""
  def refuse(token):
    raise ValueError(f"non-JSON token {token}")
  return json.loads(text, parse_constant=refuse)


def test_non_finite_metrics_are_written_as_null(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(10, "valid", {"elbo_nats": float("nan"), "nll_nats": np.float32(np.inf),
                             "rate": -np.inf, "loss": 2.5})
  with open(tmp_path / "metrics.jsonl") as f:
    row = _strict_load(f.read())
  assert row == {"step": 10, "split": "valid", "elbo_nats": None, "nll_nats": None,
                 "rate": None, "loss": 2.5}


def test_results_files_are_strict_json(tmp_path):
  path = str(tmp_path / "results.json")
  writers.write_json(path, {"nll_nats": np.float32(np.nan), "curve": np.array([1.0, np.inf]),
                            "nested": {"x": (float("-inf"), 3)}, "n": np.int64(7),
                            "ok": True, "none": None, "name": "vae"})
  with open(path) as f:
    stored = _strict_load(f.read())
  assert stored == {"nll_nats": None, "curve": [1.0, None], "nested": {"x": [None, 3]}, "n": 7,
                    "ok": True, "none": None, "name": "vae"}
  assert writers.as_json({"a": (1, np.float64(np.nan))}) == {"a": [1, None]}
