"""Run in a subprocess with 4 fake CPU devices: sharded step == single-device step."""

import sys

import jax
import numpy as np

from configs import mnist
from dgm_jax.data import pipeline, registry
from dgm_jax.models import get_method
from dgm_jax.models.base import DataSpec
from dgm_jax.train import parallel


def run_steps(method, data, devices, config, num_steps=3):
  mesh = parallel.make_mesh(devices)
  rep, split = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
  batch0 = jax.device_put(pipeline.get_batch(data, "train", 0, config.data.batch_size, 0), split)
  state = jax.jit(method.init, out_shardings=rep)(jax.random.PRNGKey(0), batch0)
  init_params = jax.device_get(state.params)
  step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.fold_in(jax.random.PRNGKey(1), s.step)),
                 in_shardings=(rep, split), out_shardings=(rep, rep))
  for i in range(num_steps):
    batch = jax.device_put(pipeline.get_batch(data, "train", i, config.data.batch_size, 0), split)
    state, metrics = step(state, batch)
  return jax.device_get(state.params), jax.device_get(metrics), init_params


def main():
  assert jax.device_count() == 4, jax.devices()
  config = mnist.get_config("smoke")
  config.data.batch_size = 32
  data = registry.load("digits")
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"])
  method = get_method("vae")(config, spec)
  sharded = run_steps(method, data, jax.devices(), config)
  single = run_steps(method, data, jax.devices()[:1], config)
  flat_a = jax.tree_util.tree_leaves(sharded[:2])
  flat_b = jax.tree_util.tree_leaves(single[:2])
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(flat_a, flat_b))
  # How far the 3 steps moved the parameters from the initial ones (not a metric's size).
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(sharded[0]), jax.tree_util.tree_leaves(sharded[2])))
  print(f"max_abs_diff={worst:.3g} loss={float(sharded[1]['loss']):.6f}/{float(single[1]['loss']):.6f}")
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert moved > 1e-4, moved  # three Adam steps at 1e-3
  print("OK")


if __name__ == "__main__":
  sys.exit(main())
