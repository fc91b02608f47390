"""Importing a model module does not import the training loop (``dgm_jax/train/__init__.py``).

A reader or a notebook that only wants a model's pure functions should not pay for, or
depend on, orbax and the loop's writers. Checked in a fresh interpreter, where nothing else
has imported them yet.
"""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import importlib, json, sys
    heavy = ("dgm_jax.train.loop", "orbax.checkpoint", "dgm_jax.eval.classifier")
    loaded = {}
    for name in sys.argv[1:]:
      importlib.import_module(name)
      loaded[name] = [m for m in heavy if m in sys.modules]
    import dgm_jax.train
    loaded["run"] = dgm_jax.train.run.__module__
    print(json.dumps(loaded))
""")

MODELS = ["dgm_jax.models.vae", "dgm_jax.models.stein_vae", "dgm_jax.models.asvae",
          "dgm_jax.models.posterior_toy", "dgm_jax.models.pfa_toy", "dgm_jax.train.state"]


def test_model_modules_import_without_the_loop():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", PROGRAM, *MODELS], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {name: loaded[name] for name in MODELS} == {name: [] for name in MODELS}
  assert loaded["run"] == "dgm_jax.train.loop"  # the package attribute still reaches the loop
