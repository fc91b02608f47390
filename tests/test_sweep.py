"""The sweep launcher: grid parsing, point names, and sweeps through the real launcher."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import submitit

from experiments import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/mnist.py:smoke"


def sweep_env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return env


def run_sweep(*args, timeout=300):
  proc = subprocess.run([sys.executable, "-m", "experiments.sweep", "--experiment=vae", *args],
                        cwd=REPO, env=sweep_env(), capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def table_rows(stdout, names):
  """The table's header cells and its rows' cells, keyed by point name (the first column)."""
  lines = stdout.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("point "))
  rows = {line.split()[0]: line.split() for line in lines[start + 1:]
          if line.split() and line.split()[0] in names}
  return lines[start].split(), rows


class TestParseValue:

  @pytest.mark.parametrize("text, value", [
      ("3", 3), ("-2", -2), ("1e-3", 1e-3), ("0.5", 0.5), ("True", True), ("False", False),
      ("(200,200)", (200, 200)), ("(100,)", (100,)), ("iwae", "iwae"), ("'iwae'", "iwae"),
      ("relu6", "relu6"), ("a b", "a b")])
  def test_literals_else_strings(self, text, value):
    parsed = sweep.parse_value(text)
    assert parsed == value and type(parsed) is type(value)


class TestParseGrid:

  def test_axes_in_flag_order_with_typed_values(self):
    axes = sweep.parse_grid(["vae.objective=vae,iwae", "seed=0,1", "vae.learning_rate=1e-3"])
    assert axes == [("vae.objective", ["vae", "iwae"]), ("seed", [0, 1]),
                    ("vae.learning_rate", [1e-3])]

  def test_commas_inside_brackets_do_not_split(self):
    axes = sweep.parse_grid(["vae.hidden_sizes=(200,200), (100,)", "x=[1,2],3"])
    assert axes == [("vae.hidden_sizes", [(200, 200), (100,)]), ("x", [[1, 2], 3])]

  @pytest.mark.parametrize("spec, needle", [
      ("seed", "key=v1,v2"), ("=1,2", "key=v1,v2"), ("a..b=1", "key=v1,v2"),
      ("seed=", "empty value"), ("seed=0,,1", "empty value"), ("seed=0,", "empty value")])
  def test_malformed_flags(self, spec, needle):
    with pytest.raises(sweep.FlagError, match=needle):
      sweep.parse_grid([spec])

  def test_key_given_twice(self):
    with pytest.raises(sweep.FlagError, match="two --grid flags"):
      sweep.parse_grid(["seed=0", "seed=1"])


class TestMakePoints:

  def test_cartesian_product_in_order(self):
    points = sweep.make_points(sweep.parse_grid(["vae.objective=vae,iwae", "seed=0,1,2"]))
    assert [p.overrides for p in points] == [
        {"vae.objective": o, "seed": s} for o in ("vae", "iwae") for s in (0, 1, 2)]
    assert points[4].name == "vae.objective=iwae,seed=1"

  def test_names_are_filesystem_safe(self):
    axes = [("vae.hidden_sizes", [(200, 200)]), ("data.data_dir", ["/data/my mnist"])]
    (point,) = sweep.make_points(axes)
    assert point.name == "vae.hidden_sizes=_200,200_,data.data_dir=_data_mymnist"
    assert "/" not in point.name and " " not in point.name

  def test_long_names_are_shortened_and_stay_distinct(self):
    points = sweep.make_points([("data.data_dir", ["x" * 300 + "a", "x" * 300 + "b"])])
    assert all(len(p.name) <= 200 for p in points)
    assert points[0].name != points[1].name

  def test_no_grid_is_one_default_point(self):
    assert sweep.make_points([]) == [sweep.Point("default", {})]

  def test_points_sharing_a_folder_are_an_error(self):
    with pytest.raises(sweep.FlagError, match="share the folder"):
      sweep.make_points(sweep.parse_grid(["seed=1,1"]))
    with pytest.raises(sweep.FlagError, match="share the folder"):
      sweep.make_points([("data.data_dir", ["a/b", "a_b"])])


class TestLauncherCommand:

  def test_overrides_are_config_flags(self):
    command = sweep.launcher_command("vae", "configs/mnist.py:smoke", "/w/p",
                                     {"vae.objective": "iwae", "vae.hidden_sizes": (20, 20)})
    assert command == [sys.executable, "-m", "experiments.vae", "--config=configs/mnist.py:smoke",
                       "--workdir=/w/p", "--config.vae.objective=iwae",
                       "--config.vae.hidden_sizes=(20, 20)"]

  def test_multi_host_points_run_distributed(self):
    command = sweep.launcher_command("vae", "c.py", "/w", {"seed": 1}, distributed=True)
    assert command[-2:] == ["--config.seed=1", "--config.distributed=True"]


class TestRunCommand:

  def test_failure_reports_the_last_error_line(self, tmp_path):
    log = str(tmp_path / "log")
    script = "import sys; print('error: bad thing', file=sys.stderr); print('I after'); sys.exit(3)"
    assert sweep.run_command([sys.executable, "-c", script], str(tmp_path), log) == (
        3, "error: bad thing")
    script = "raise KeyError('nope')"
    code, line = sweep.run_command([sys.executable, "-c", script], str(tmp_path), log)
    assert (code, line) == (1, "KeyError: 'nope'")
    assert open(log).read().count("$ ") == 2  # both commands appended to one log

  def test_jax_note_after_the_exception_is_not_the_error(self, tmp_path):
    """JAX prints a note on filtered frames below the exception: the point's error is the
    exception, not the note (which the summary used to show)."""
    script = ("import sys; print('ValueError: bad shape', file=sys.stderr); "
              "print('-' * 20, file=sys.stderr); print('For simplicity, JAX has removed its "
              "internal frames from the traceback of the following exception.', "
              "file=sys.stderr); sys.exit(1)")
    assert sweep.run_command([sys.executable, "-c", script], str(tmp_path),
                             str(tmp_path / "log")) == (1, "ValueError: bad shape")

  def test_success(self, tmp_path):
    log = str(tmp_path / "log")
    assert sweep.run_command([sys.executable, "-c", "print('hi')"], str(tmp_path), log) == (0, "")
    assert "hi" in open(log).read()

  def test_launcher_job_through_submitit_returns_failures(self, tmp_path):
    executor = submitit.AutoExecutor(str(tmp_path / "submitit"), cluster="debug")
    job = executor.submit(sweep.LauncherJob(), [sys.executable, "-c", "exit(5)"], str(tmp_path),
                          str(tmp_path / "log"))
    assert job.results() == [(5, "(no output)")]


class TestFormatTable:

  def test_aligned_with_dashes_for_missing_values(self):
    records = [
        {"point": "seed=0", "status": "ran", "results": {
            "method": "vae", "dataset": "mnist", "steps": 20, "nll_nats": 96.123,
            "elbo_nats": -101.5, "wall_s": 12.0}},
        {"point": "seed=10", "status": "failed (exit 1)", "results": None},
        {"point": "seed=2", "status": "skipped", "results": {"method": "vae", "steps": 20}}]
    lines = sweep.format_table(records).splitlines()
    assert lines[0].split() == list(sweep.TABLE_COLUMNS)
    assert lines[1].split() == ["seed=0", "ran", "vae", "mnist", "20", "96.12", "-101.50", "12.00"]
    assert lines[2].split() == ["seed=10", "failed", "(exit", "1)"] + ["-"] * 6
    assert lines[3].split() == ["seed=2", "skipped", "vae", "-", "20", "-", "-", "-"]
    # Columns line up: every number ends where its header ends.
    for column in ("steps", "wall_s"):
      end = lines[0].index(column) + len(column)
      assert {line[end - 1] for line in lines[1:]} <= set("0123456789-")
      assert all(len(line) == end or line[end] == " " for line in lines[1:])


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep") / "local")
  return workdir, run_sweep(SMOKE, "--grid=seed=0,1", f"--workdir={workdir}", "--max_parallel=2")


def test_local_sweep_runs_every_point_through_the_launcher(local_sweep):
  workdir, (code, out, err) = local_sweep
  assert code == 0, out + err[-3000:]
  header, rows = table_rows(out, {"seed=0", "seed=1"})
  assert header == list(sweep.TABLE_COLUMNS)
  assert set(rows) == {"seed=0", "seed=1"}
  for name, cells in rows.items():
    assert cells[1:5] == ["ran", "vae", "mnist", "20"], cells
    assert "-" not in cells, cells
    results = json.load(open(os.path.join(workdir, name, "results.json")))
    assert results["steps"] == 20 and results["method"] == "vae"
    assert cells[5] == f"{results['nll_nats']:.2f}"
    config = json.load(open(os.path.join(workdir, name, "config.json")))
    assert config["seed"] == int(name[-1])
  assert json.load(open(os.path.join(workdir, "sweep.json"))) == {"experiment": "vae",
                                                                  "config": SMOKE.split("=")[1]}
  summary = json.load(open(os.path.join(workdir, "sweep_results.json")))
  assert [(s["point"], s["overrides"], s["status"]) for s in summary] == [
      ("seed=0", {"seed": 0}, "ran"), ("seed=1", {"seed": 1}, "ran")]
  assert all(s["results"]["steps"] == 20 for s in summary)
  # Different seeds give different runs.
  assert summary[0]["results"]["nll_nats"] != summary[1]["results"]["nll_nats"]


def test_rerun_skips_points_with_results(local_sweep):
  workdir, _ = local_sweep
  stamps = {point: os.path.getmtime(os.path.join(workdir, point, "results.json"))
            for point in ("seed=0", "seed=1")}
  code, out, err = run_sweep(SMOKE, "--grid=seed=0,1", f"--workdir={workdir}", timeout=60)
  assert code == 0, out + err[-3000:]
  assert "0 to run" in out
  _, rows = table_rows(out, {"seed=0", "seed=1"})
  assert {name: cells[1] for name, cells in rows.items()} == {
      "seed=0": "skipped", "seed=1": "skipped"}
  assert rows["seed=0"][5] != "-"
  assert stamps == {point: os.path.getmtime(os.path.join(workdir, point, "results.json"))
                    for point in stamps}
  summary = json.load(open(os.path.join(workdir, "sweep_results.json")))
  assert [s["status"] for s in summary] == ["skipped", "skipped"]


def test_slurm_path_through_submitits_debug_executor(tmp_path):
  workdir, point = str(tmp_path / "debug"), "eval.valid_importance_samples=0"  # one compile less
  code, out, err = run_sweep(SMOKE, f"--grid={point}", f"--workdir={workdir}", "--executor=debug",
                             "--slurm_partition=gpu", "--slurm_time_min=30")
  assert code == 0, out + err[-3000:]
  assert "Submitted 1 jobs to debug" in out
  results = json.load(open(os.path.join(workdir, point, "results.json")))
  assert results["steps"] == 20
  config = json.load(open(os.path.join(workdir, point, "config.json")))
  assert config["eval"]["valid_importance_samples"] == 0
  _, rows = table_rows(out, {point})
  assert rows[point][1:5] == ["ran", "vae", "mnist", "20"]
  assert os.listdir(os.path.join(workdir, "submitit"))


def test_failed_point_is_reported_and_fails_the_sweep(tmp_path):
  """A value of the right type that the launcher rejects fails in the point's process."""
  workdir, point = str(tmp_path / "failing"), "data.batch_size=0"
  code, out, err = run_sweep(SMOKE, f"--grid={point}", f"--workdir={workdir}")
  assert code == 1, out + err[-3000:]
  _, rows = table_rows(out, {point})
  assert rows[point][1:4] == ["failed", "(exit", "1)"]
  failure = next(line for line in out.splitlines() if line.startswith(f"{point}: failed"))
  assert "error: ConfigError: invalid config: data.batch_size=0" in failure
  (record,) = json.load(open(os.path.join(workdir, "sweep_results.json")))
  assert record["returncode"] == 1 and record["results"] is None
  assert record["error"].startswith("error: ConfigError")


def test_a_workdir_of_another_sweep_is_refused(tmp_path):
  """Its points' results.json would have been skipped as done and tabulated as this sweep's."""
  workdir = tmp_path / "sweep"
  workdir.mkdir()
  (workdir / "sweep.json").write_text(json.dumps({"experiment": "stein_vae",
                                                  "config": "configs/mnist.py:smoke"}))
  code, out, err = run_sweep(SMOKE, "--grid=seed=0", f"--workdir={workdir}", timeout=60)
  assert code == 1, out + err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "holds a sweep of --experiment=stein_vae" in lines[0], err
  assert sorted(os.listdir(workdir)) == ["sweep.json"]


def test_a_damaged_point_results_file_fails_its_point_not_the_table(tmp_path):
  (tmp_path / "seed=0").mkdir()
  (tmp_path / "seed=0" / "results.json").write_text('{"nll_nats": 9')
  point = sweep.Point("seed=0", {"seed": 0})
  record = sweep._record(point, str(tmp_path), None)  # pylint: disable=protected-access
  assert record["status"] == "failed (unreadable results.json)" and record["results"] is None
  assert "seed=0/results.json" in record["error"]


def test_a_non_finite_override_is_written_as_strict_json(tmp_path):
  """``--grid=vae.learning_rate=1e999`` parses to inf; ``sweep_results.json`` held the bare
  token ``Infinity``, which ``jq`` and strict JSON readers refuse."""
  point = sweep.Point("lr=inf", {"vae.learning_rate": sweep.parse_value("1e999"),
                                 "seed": float("nan"), "tags": [float("-inf"), 1.5]})
  path = str(tmp_path / "sweep_results.json")
  sweep._write_json(path, [sweep._record(point, str(tmp_path), ("failed (exit 1)", 1, "x"))])  # pylint: disable=protected-access
  with open(path) as f:
    stored = json.load(f, parse_constant=lambda token: pytest.fail(f"bare {token}"))
  assert stored[0]["overrides"] == {"vae.learning_rate": "inf", "seed": "nan",
                                    "tags": ["-inf", 1.5]}


def test_a_workdir_under_a_file_is_one_error_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  code, out, err = run_sweep(SMOKE, "--grid=seed=0", f"--workdir={tmp_path / 'a_file' / 'x'}",
                             timeout=60)
  assert code == 1
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "cannot be created or written" in lines[0], err


@pytest.mark.parametrize("args, needle", [
    (["--grid=seed=0,,1"], "empty value"),
    (["--grid=seed"], "must be key=v1,v2"),
    (["--grid=seed=0", "--executor=cloud"], "--executor='cloud'"),
    (["--grid=seed=0", "--experiment=no_such_method"], "not a launcher module"),
    (["--grid=seed=0", "--nodes=2"], "only for --executor=slurm"),
    (["--grid=seed=0", "--executor=debug", "--tasks_per_node=2"], "runs one process"),
    (["--grid=seed=0", "--max_parallel=0"], "at least 1"),
    (["positional"], "unexpected arguments"),
    (["--grid=seed=0", "--config=configs/nope.py"], "no such config file"),
    (["--grid=seed=0", "--config=configs/mnist.py:bogus"], "does not load: ValueError: unknown"),
    (["--grid=seed=0,1", "--grid=vae.no_such_key=1"], "'vae.no_such_key' is not a key of"),
    (["--grid=seed=0,abc"], "seed=abc"),
])
def test_bad_flags_stop_before_anything_runs(tmp_path, args, needle):
  workdir = str(tmp_path / "bad")
  code, out, err = run_sweep(SMOKE, f"--workdir={workdir}", *args, timeout=60)
  assert code == 1
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
  assert not os.path.exists(workdir)


@pytest.mark.skipif(shutil.which("srun") is not None, reason="Slurm is installed here")
def test_slurm_executor_without_slurm_is_one_error_line(tmp_path):
  code, _, err = run_sweep(SMOKE, "--grid=seed=0", f"--workdir={tmp_path / 'w'}",
                           "--executor=slurm")
  assert code == 1 and err.strip().startswith("error: --executor=slurm") and "\n" not in err.strip()
  assert not os.path.exists(tmp_path / "w")
