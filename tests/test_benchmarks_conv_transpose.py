"""benchmarks/conv_transpose.py runs end to end at a tiny size and prints one JSON line.

No timing thresholds here: the speed goals live in the benchmark's output only. The
output difference it reports is a correctness check: the two implementations are one
function.
"""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "conv_transpose.py")


def test_tiny_run_prints_one_json_line(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  proc = subprocess.run([sys.executable, SCRIPT, "--repeats", "1", "--batch", "2"],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  assert result["benchmark"] == "conv_transpose"
  assert set(result["rows"]) == {"mnist_semi_cnn", "cifar10_asvae"}
  for row in result["rows"].values():
    assert row["batch"] == 2
    assert row["max_abs_output_difference"] < 1e-4
    for kind in ("forward", "forward_backward"):
      for key in ("lax_ms", "phases_ms", "lax_over_phases"):
        assert math.isfinite(row[kind][key]) and row[kind][key] > 0, (kind, key)


def test_unknown_decoder_is_one_clear_error(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, SCRIPT, "--decoders", "resnet"], cwd=str(tmp_path),
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "unknown decoder 'resnet'" in proc.stderr
