"""Grid sweeps over any launcher in ``experiments/``: here, or on Slurm through submitit.

  python -m experiments.sweep --experiment=vae --config=configs/mnist.py:smoke \
      --grid=vae.objective=vae,iwae --grid=seed=0,1 --workdir=runs/sweep1
  python -m experiments.sweep ... --executor=slurm --slurm_partition=gpu --gpus_per_node=8

The points are the Cartesian product of the ``--grid`` flags (``key=v1,v2,...``;
values are Python literals where they parse as one, else strings). Each point runs
the real command line of DESIGN section 3, ``python -m experiments.<experiment>
--config=... --workdir=<workdir>/<point> --config.<key>=<value> ...``, in a process
of its own, so a point is isolated and the same command runs on a cluster. A point
whose ``results.json`` exists is skipped, so re-running a sweep resumes it (and each
launcher resumes from its checkpoints). The sweep prints a table of the points'
results, writes ``<workdir>/sweep_results.json`` and exits 1 if a point failed.
"""

import ast
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

import submitit
from absl import app, flags

__all__ = ["FlagError", "Point", "parse_value", "parse_grid", "make_points", "check_overrides",
           "launcher_command", "run_command", "LauncherJob", "format_table", "main"]

EXECUTORS = ("local", "slurm", "debug")
TABLE_COLUMNS = ("point", "status", "method", "dataset", "steps", "nll_nats", "elbo_nats", "wall_s")
_CLUSTER_FLAGS = ("slurm_partition", "slurm_time_min", "gpus_per_node", "nodes", "tasks_per_node")
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_MAX_NAME_CHARS = 200

_EXPERIMENT = flags.DEFINE_string("experiment", None, "Launcher module in experiments/, e.g. vae.")
_CONFIG = flags.DEFINE_string("config", None, "Config of every point, e.g. configs/mnist.py:smoke.")
_GRID = flags.DEFINE_multi_string(
    "grid", [], "key=v1,v2,...; the points are the product of all --grid flags, "
    "e.g. --grid=vae.objective=vae,iwae --grid=seed=0,1.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Sweep folder; point <name> runs in <workdir>/<name> "
    "(default: a new folder in ./runs).")
_EXECUTOR = flags.DEFINE_string("executor", "local", "local: subprocesses on this machine; slurm: "
                                "a submitit job array; debug: the slurm path run in-process.")
_MAX_PARALLEL = flags.DEFINE_integer("max_parallel", None, "Most points running at once "
                                     "(default: 1 locally, no limit beyond submitit's on Slurm).")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "Slurm partition.")
_SLURM_TIME_MIN = flags.DEFINE_integer("slurm_time_min", 240, "Time limit of each job, minutes.")
_GPUS_PER_NODE = flags.DEFINE_integer("gpus_per_node", None, "GPUs per node of each job.")
_NODES = flags.DEFINE_integer("nodes", 1, "Nodes per point; nodes * tasks_per_node > 1 runs the "
                              "point multi-host (--config.distributed=True).")
_TASKS_PER_NODE = flags.DEFINE_integer("tasks_per_node", 1, "Processes per node of each job.")


class FlagError(ValueError):
  """A bad flag, found before anything runs.

  A malformed ``--grid``, points that cannot be told apart, an unknown experiment,
  config file or executor, or cluster flags the executor cannot honour.
  """


@dataclasses.dataclass(frozen=True)
class Point:
  """One grid point: its folder name and its ``{config key: value}`` overrides."""
  name: str
  overrides: dict


def parse_value(text):
  """A Python literal where the text is one, else the text.

  ``'3'`` -> 3, ``'1e-3'`` -> 0.001, ``'True'`` -> True, ``'(2,2)'`` -> (2, 2),
  ``'iwae'`` -> ``'iwae'``.
  """
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return text


def parse_grid(specs):
  """Parses ``--grid`` flags into axes.

  Args:
    specs: strings ``'key=v1,v2,...'``; commas inside brackets do not split, so
      ``'vae.hidden_sizes=(200,200),(100,)'`` has two values.

  Returns:
    A list of ``(key, [value, ...])`` in flag order.

  Raises:
    FlagError: a flag without ``=``, a key that is not a dotted name, an empty
      value, or a key given twice.
  """
  axes = []
  for spec in specs:
    key, equals, values_text = spec.partition("=")
    key = key.strip()
    if not equals or not _KEY.fullmatch(key):
      raise FlagError(f"--grid={spec!r} must be key=v1,v2,... with a dotted config key "
                      "(e.g. --grid=vae.objective=vae,iwae)")
    values = _split_top_level(values_text)
    if not all(values):
      raise FlagError(f"--grid={spec!r} has an empty value")
    if key in dict(axes):
      raise FlagError(f"the key {key!r} is in two --grid flags; give its values in one")
    axes.append((key, [parse_value(v) for v in values]))
  return axes


def make_points(axes):
  """The Cartesian product of the axes, named ``key=value,key=value`` (filesystem-safe).

  Raises:
    FlagError: two points would share a folder (a repeated value, or values that
      differ only in characters the name replaces).
  """
  points, seen = [], {}
  keys = [key for key, _ in axes]
  for combination in itertools.product(*(values for _, values in axes)):
    overrides = dict(zip(keys, combination))
    name = _point_name(overrides)
    if name in seen:
      raise FlagError(f"the points {seen[name]} and {overrides} would share the folder {name!r}")
    seen[name] = overrides
    points.append(Point(name, overrides))
  return points


def check_overrides(config_spec, points):
  """Checks that every point's overrides name keys of the config, with values of their type.

  A misspelt ``--grid`` key would otherwise fail in every point's own process (on a
  cluster, after a job array was submitted); now the sweep stops before anything runs.
  The launcher's own checks (values in range, data, shapes) still run in each point.

  Raises:
    FlagError: the config file does not load, a key is not in it, or a value does
      not have the key's type.
  """
  path, _, arg = config_spec.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
  except Exception as error:  # pylint: disable=broad-except  (whatever the file raises)
    raise FlagError(f"--config={config_spec!r} does not load: {type(error).__name__}: "
                    f"{' '.join(str(error).split())}") from None
  for point in points:
    for key, value in point.overrides.items():
      *parents, leaf = key.split(".")
      node = config
      for part in parents:
        node = node[part] if hasattr(node, "keys") and part in node else None
      if not hasattr(node, "keys") or leaf not in node:
        raise FlagError(f"--grid key {key!r} is not a key of {config_spec} (see the config file)")
      if isinstance(node[leaf], str):  # the launcher reads a string field's value as text
        value = _format_value(value)
      try:
        node[leaf] = value  # ml_collections' type check, as the launcher's override does
      except (TypeError, ValueError) as error:
        raise FlagError(f"--grid value {key}={_format_value(value)}: {error}") from None


def launcher_command(experiment, config, workdir, overrides, distributed=False):
  """The launcher's command line for one point, as an argument list."""
  command = [sys.executable, "-m", f"experiments.{experiment}", f"--config={config}",
             f"--workdir={workdir}"]
  command += [f"--config.{key}={_format_value(value)}" for key, value in overrides.items()]
  if distributed:
    command.append("--config.distributed=True")
  return command


def run_command(command, cwd, log_path, env=None):
  """Runs a command with its output appended to ``log_path``.

  Returns:
    ``(returncode, error_line)``: on failure the last output line that starts with
    ``error:`` (the launchers' one-line errors), else the last non-empty line (a
    traceback's exception); ``''`` on success.
  """
  with open(log_path, "a") as log:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    output_start = log.tell()
    returncode = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                check=False).returncode
  return returncode, ("" if returncode == 0 else _last_error_line(log_path, output_start))


class LauncherJob(submitit.helpers.Checkpointable):
  """A submitit job that runs one point's command line; it never raises.

  Being Checkpointable, a job that reaches its time limit or is preempted is
  requeued with the same command, and the launcher resumes from its checkpoints.
  """

  def __call__(self, command, cwd, log_path):
    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:
      log_path = f"{log_path}.task{environment.global_rank}"
    return run_command(command, cwd, log_path)


def format_table(records):
  """An aligned plain-text table of sweep records (see ``sweep_results.json``)."""
  rows = [list(TABLE_COLUMNS)] + [[_cell(record, column) for column in TABLE_COLUMNS]
                                  for record in records]
  widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
  numeric = TABLE_COLUMNS.index("steps")
  return "\n".join(
      "  ".join(cell.rjust(width) if i >= numeric else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
      for row in rows)


def main(argv):
  """Checks the flags, runs the points without results, prints the table; 1 if a point failed."""
  try:
    if len(argv) > 1:
      raise FlagError(f"unexpected arguments {argv[1:]}")
    kind = _check_flags()
    points = make_points(parse_grid(_GRID.value))
    check_overrides(_CONFIG.value, points)
  except FlagError as error:
    _fail(str(error))
  workdir = os.path.abspath(_WORKDIR.value or os.path.join(
      "runs", f"sweep_{_EXPERIMENT.value}_{time.strftime('%Y%m%d-%H%M%S')}"))
  executor = None if kind == "local" else _make_executor(kind, workdir)
  _claim_workdir(workdir, {"experiment": _EXPERIMENT.value, "config": _CONFIG.value})
  distributed = executor is not None and _NODES.value * _TASKS_PER_NODE.value > 1
  commands = {point.name: launcher_command(_EXPERIMENT.value, _CONFIG.value,
                                           os.path.join(workdir, point.name), point.overrides,
                                           distributed)
              for point in points
              if not os.path.exists(os.path.join(workdir, point.name, "results.json"))}
  logs_dir = os.path.join(workdir, "logs")
  os.makedirs(logs_dir, exist_ok=True)
  logs = {name: os.path.join(logs_dir, f"{name}.log") for name in commands}
  print(f"Sweep of {len(points)} points in {workdir}: {len(commands)} to run ({kind} executor, "
        f"logs in {logs_dir}), {len(points) - len(commands)} skipped: results.json exists.",
        flush=True)
  if executor is None:
    outcomes = _run_local(commands, logs, _MAX_PARALLEL.value or 1)
  else:
    outcomes = _run_submitit(executor, commands, logs)
  records = [_record(point, workdir, outcomes.get(point.name)) for point in points]
  _write_json(os.path.join(workdir, "sweep_results.json"), records)
  return _print_summary(records, workdir, logs)


def _check_flags():
  """Validates the flags before anything runs; returns the executor name."""
  experiment, executor = _EXPERIMENT.value, _EXECUTOR.value
  if not experiment:
    raise FlagError("no --experiment given, e.g. --experiment=vae (a module in experiments/)")
  if (not experiment.isidentifier() or experiment == "sweep"
      or importlib.util.find_spec(f"experiments.{experiment}") is None):
    raise FlagError(f"--experiment={experiment!r} is not a launcher module in experiments/")
  if not _CONFIG.value:
    raise FlagError("no --config given, e.g. --config=configs/mnist.py:smoke")
  if not os.path.isfile(_CONFIG.value.split(":")[0]):
    raise FlagError(f"--config={_CONFIG.value!r}: no such config file")
  if executor not in EXECUTORS:
    raise FlagError(f"--executor={executor!r}; choose one of {', '.join(EXECUTORS)}")
  given = [name for name in _CLUSTER_FLAGS if flags.FLAGS[name].present]
  if executor == "local" and given:
    raise FlagError(f"--{', --'.join(given)}: only for --executor=slurm (or debug), not local")
  if executor == "debug" and _NODES.value * _TASKS_PER_NODE.value > 1:
    raise FlagError("--executor=debug runs one process; multi-host points need --executor=slurm")
  for flag in (_MAX_PARALLEL, _SLURM_TIME_MIN, _NODES, _TASKS_PER_NODE):
    if flag.value is not None and flag.value < 1:
      raise FlagError(f"--{flag.name}={flag.value} must be at least 1")
  if _GPUS_PER_NODE.value is not None and _GPUS_PER_NODE.value < 0:
    raise FlagError(f"--gpus_per_node={_GPUS_PER_NODE.value} must not be negative")
  return executor


def _make_executor(cluster, workdir):
  """A submitit AutoExecutor for Slurm, or its in-process debug twin."""
  try:
    executor = submitit.AutoExecutor(os.path.join(workdir, "submitit", "%j"), cluster=cluster)
  except RuntimeError as error:
    _fail(f"--executor={cluster}: {error}")
  executor.update_parameters(
      name=f"sweep_{_EXPERIMENT.value}", timeout_min=_SLURM_TIME_MIN.value, nodes=_NODES.value,
      tasks_per_node=_TASKS_PER_NODE.value, gpus_per_node=_GPUS_PER_NODE.value,
      slurm_partition=_SLURM_PARTITION.value, slurm_array_parallelism=_MAX_PARALLEL.value)
  return executor


def _run_local(commands, logs, max_parallel):
  """Runs the commands as subprocesses here, at most ``max_parallel`` at once."""
  env = dict(os.environ)
  if max_parallel > 1:  # Several JAX processes cannot each preallocate most of one GPU.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  outcomes = {}
  with concurrent.futures.ThreadPoolExecutor(max_parallel) as pool:
    futures = {pool.submit(run_command, command, os.getcwd(), logs[name], env): name
               for name, command in commands.items()}
    for future in concurrent.futures.as_completed(futures):
      outcomes[futures[future]] = _report(futures[future], *future.result())
  return outcomes


def _run_submitit(executor, commands, logs):
  """Submits the commands as one submitit job array and waits for every job."""
  if not commands:
    return {}
  job_fn = LauncherJob()
  with executor.batch():
    submitted = {name: executor.submit(job_fn, command, os.getcwd(), logs[name])
                 for name, command in commands.items()}
  print(f"Submitted {len(submitted)} jobs to {executor.cluster}: "
        f"{', '.join(job.job_id for job in submitted.values())}", flush=True)
  outcomes = {}
  for name, job in submitted.items():
    try:
      task_results = job.results()
    except submitit.core.utils.UncompletedJobError as error:
      outcomes[name] = _report(name, None, _last_line(str(error)))
      continue
    failures = [result for result in task_results if result[0] != 0]
    outcomes[name] = _report(name, *(failures or task_results)[0])
  return outcomes


def _report(name, returncode, error):
  """Prints and returns a finished point's outcome ``(status, returncode, error)``."""
  if returncode == 0:
    status = "ran"
  else:
    status = f"failed (exit {returncode})" if returncode is not None else "failed (job lost)"
  print(f"{name}: {status}{': ' + error if error else ''}", flush=True)
  return status, returncode, error


def _record(point, workdir, outcome):
  """One entry of ``sweep_results.json``; a point without an outcome was skipped."""
  status, returncode, error = outcome or ("skipped", None, "")
  results_path = os.path.join(workdir, point.name, "results.json")
  results = None
  if os.path.exists(results_path):
    try:
      with open(results_path) as f:
        results = json.load(f)
    except (OSError, ValueError) as damage:  # a damaged file fails its point, not the table
      status, error = "failed (unreadable results.json)", f"{results_path}: {damage}"
  return {"point": point.name, "overrides": point.overrides,
          "workdir": os.path.join(workdir, point.name), "status": status,
          "returncode": returncode, "error": error, "results": results}


def _print_summary(records, workdir, logs):
  """Prints the table and each failure's error line; returns the exit status."""
  print(format_table(records))
  failed = [record for record in records if record["status"].startswith("failed")]
  for record in failed:
    print(f"{record['point']}: {record['status']}: {record['error']} "
          f"(log: {logs[record['point']]})")
  summary = (f"{len(failed)} of {len(records)} points failed" if failed
             else "All points have results")
  print(f"{summary}; see {os.path.join(workdir, 'sweep_results.json')}")
  return 1 if failed else 0


def _cell(record, column):
  value = record[column] if column in ("point", "status") else (record["results"] or {}).get(column)
  if value is None:
    return "-"
  return f"{value:.2f}" if isinstance(value, float) else str(value)


def _point_name(overrides):
  """``{'seed': 1, 'vae.objective': 'iwae'}`` -> ``'seed=1,vae.objective=iwae'``."""
  text = ",".join(f"{key}={_format_value(value)}" for key, value in overrides.items()) or "default"
  name = re.sub(r"[^\w.,=+-]", "_", re.sub(r"\s+", "", text))
  if len(name) > _MAX_NAME_CHARS:
    name = f"{name[:_MAX_NAME_CHARS - 13]}--{hashlib.sha1(text.encode()).hexdigest()[:11]}"
  return name


def _format_value(value):
  """How a value is written on the launcher's command line (strings stay unquoted)."""
  return value if isinstance(value, str) else repr(value)


def _split_top_level(text):
  """Splits at the commas outside brackets: ``'(1,2),(3,)'`` -> ``['(1,2)', '(3,)']``."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  parts.append(text[start:].strip())
  return parts


def _last_error_line(log_path, output_start, tail_bytes=65536):
  """The error line among the last ``tail_bytes`` a command wrote from ``output_start`` on."""
  with open(log_path, "rb") as f:
    f.seek(max(output_start, os.path.getsize(log_path) - tail_bytes))
    text = f.read().decode(errors="replace")
  return _last_line(text)


def _last_line(text):
  """The point's error: its ``error:`` line, else the last line that is not JAX's note on
  filtered traceback frames (which follows the exception it explains)."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  lines = [line for line in lines if not line.startswith(_JAX_FRAMES_NOTE) and set(line) != {"-"}]
  return (errors or lines or ["(no output)"])[-1]


_JAX_FRAMES_NOTE = "For simplicity, JAX has removed its internal frames"


def _claim_workdir(workdir, spec):
  """Records the sweep's experiment and config file in ``<workdir>/sweep.json``, or stops if
  the workdir holds another sweep's: its points' ``results.json`` would be skipped as done
  and tabulated as this sweep's. A rerun of the same sweep (more grid points included)
  goes on."""
  path = os.path.join(workdir, "sweep.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        stored = json.load(f)
    except (OSError, ValueError) as error:
      _fail(f"{path} cannot be read ({error}); delete it or use another --workdir")
    if stored != spec:
      _fail(f"{workdir} holds a sweep of --experiment={stored.get('experiment')} "
            f"--config={stored.get('config')}, not --experiment={spec['experiment']} "
            f"--config={spec['config']}: its points would be skipped as done; use another "
            "--workdir")
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    _write_json(path, spec)
  except OSError as error:  # e.g. a path under a file, or no permission
    _fail(f"--workdir={workdir} cannot be created or written ({error.strerror or error})")


def _write_json(path, obj):
  """Writes strict JSON (``jq`` reads it): a non-finite override such as ``1e999`` is
  written as the text ``"inf"``, not as the bare token ``Infinity``."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_finite_or_text(obj), f, indent=2, default=str, allow_nan=False)
  os.replace(tmp, path)


def _finite_or_text(obj):
  """``obj`` with each NaN or infinite float replaced by its text (``'nan'``, ``'-inf'``)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return repr(obj)
  if isinstance(obj, dict):
    return {key: _finite_or_text(value) for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite_or_text(value) for value in obj]
  return obj


def _fail(message):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


if __name__ == "__main__":
  app.run(main)
