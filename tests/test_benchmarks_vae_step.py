"""benchmarks/vae_step.py runs end to end at a tiny size and prints one JSON line of rates.

No timing thresholds here: the speed goals live in the benchmark's output only.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "vae_step.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_tiny_run_prints_one_json_line_with_positive_rates(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  cmd = [sys.executable, SCRIPT, "--steps", "20", "--repeats", "1", "--log-every", "10",
         "--warmup", "2", "--settle", "0", "--keep-workdirs", str(tmp_path)]
  if not HAS_TORCH:
    cmd.append("--no-torch")
  proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])

  assert result["benchmark"] == "vae_step"
  assert result["batch_size"] == 100 and result["dataset"] == "mnist" and result["data_source"]
  for key in ("loop_steps_per_s", "bare_steps_per_s"):
    assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
  assert math.isfinite(result["loop_overhead"]) and math.isfinite(result["loop_cpu_overhead"])
  for key in ("loop", "bare"):
    assert result["cpu_ms_per_step"][key] > 0, key
  # One timed interval of 20 steps after the 10-step warm-up interval of the loop.
  assert result["steps_timed"]["loop"] == 20 and result["steps_timed"]["bare"] == 20
  assert len(result["per_repeat_steps_per_s"]["loop"]) == 1
  if HAS_TORCH:
    assert result["torch_steps_per_s"] > 0 and result["cpu_ms_per_step"]["torch"] > 0
    assert result["torch"]
  else:
    assert result["torch_steps_per_s"] is None and result["torch_note"]
  for key in ("jax", "backend", "machine"):
    assert result[key], key
  # The real loop wrote its workdir contract.
  assert os.path.exists(os.path.join(tmp_path, "loop_0", "results.json"))


def test_missing_torch_is_skipped_with_a_message(monkeypatch, capsys):
  monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the module sets a default at import
  monkeypatch.setattr(sys, "path", list(sys.path))  # ... and puts the repo root on the path
  spec = importlib.util.spec_from_file_location("vae_step_under_test", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  torch, note = module.import_torch(True)
  assert torch is None and "not installed" in note
  assert "torch is not installed" in capsys.readouterr().err
  assert module.import_torch(False) == (None, "skipped (--no-torch)")
