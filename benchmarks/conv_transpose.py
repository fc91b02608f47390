"""Times the convolutional decoders with phase-decomposed against lax transposed convolutions.

Prints one JSON line. For each decoder the configs build (``configs/mnist.py:semi,cnn``'s
image decoder at the semi-supervised VAE's batch of 100 + 50 images, and
``configs/cifar10.py``'s AS-VAE decoder of Fig. 5.2 at batch 64), the seconds of one
jitted forward pass and of one forward-and-backward pass (gradients in the parameters
and in z, as a train step takes them) with ``transpose_impl="lax"``
(``flax.linen.ConvTranspose``, i.e. ``lax.conv_transpose``) and with
``transpose_impl="phases"`` (``nets.conv.PhaseConvTranspose``), measured in the same
run with interleaved repeats, their ratio, and the largest output difference
between the two (the same function: ``tests/test_conv_transpose.py``).

  python benchmarks/conv_transpose.py [--repeats 5 --decoders mnist_semi_cnn,cifar10_asvae]
"""

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import cifar10, mnist
from dgm_jax.nets import conv


def decoders():
  """name -> (decoder settings, batch size, latent dim)."""
  semi_config = mnist.get_config("semi,cnn")
  semi = semi_config.vae
  asvae = cifar10.get_config().asvae
  return {
      "mnist_semi_cnn": (dict(image_shape=(28, 28, 1), outputs_per_pixel=1,
                              stage_features=tuple(semi.decoder_conv_features),
                              stage_depth=semi.get("conv_stage_depth", 0),
                              activation=semi.activation, kernel_size=semi.conv_kernel_size),
                         semi_config.data.batch_size + semi.labeled_batch_size, semi.latent_dim),
      "cifar10_asvae": (dict(image_shape=(32, 32, 3), outputs_per_pixel=2,
                             stage_features=tuple(asvae.decoder_conv_features),
                             stage_depth=asvae.conv_stage_depth, activation=asvae.activation,
                             kernel_size=asvae.get("conv_kernel_size", 3)),
                        64, asvae.latent_dim),
  }


def timed(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(settings, batch, latent_dim, repeats):
  z = jax.random.normal(jax.random.PRNGKey(0), (batch, latent_dim))
  nets = {impl: conv.ConvDecoder(**settings, transpose_impl=impl) for impl in ("lax", "phases")}
  params = jax.jit(nets["lax"].init)(jax.random.PRNGKey(1), z)
  fns = {}
  for impl, net in nets.items():
    loss = lambda p, c, net=net: jnp.sum(jnp.square(net.apply(p, c)))
    fns[impl] = {"forward": jax.jit(net.apply), "forward_backward": jax.jit(
        jax.grad(loss, argnums=(0, 1)))}
  outputs = {impl: fns[impl]["forward"](params, z) for impl in fns}
  row = {"batch": batch, "max_abs_output_difference": float(
      jnp.max(jnp.abs(outputs["lax"] - outputs["phases"])))}
  for kind in ("forward", "forward_backward"):
    times = {impl: [] for impl in fns}
    for impl in fns:
      timed(fns[impl][kind], params, z)  # compile and warm up
    for _ in range(repeats):
      for impl in fns:
        times[impl].append(timed(fns[impl][kind], params, z))
    lax_s, phases_s = (float(np.median(times[impl])) for impl in ("lax", "phases"))
    row[kind] = {"lax_ms": round(lax_s * 1e3, 2), "phases_ms": round(phases_s * 1e3, 2),
                 "lax_over_phases": round(lax_s / phases_s, 2)}
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--decoders", default="mnist_semi_cnn,cifar10_asvae")
  parser.add_argument("--batch", type=int, default=0, help="override every batch size (0: keep)")
  args = parser.parse_args()
  table = decoders()
  rows = {}
  for name in args.decoders.split(","):
    if name not in table:
      parser.error(f"unknown decoder {name!r}; choose from {sorted(table)}")
    settings, batch, latent_dim = table[name]
    rows[name] = measure(settings, args.batch or batch, latent_dim, args.repeats)
  print(json.dumps({"benchmark": "conv_transpose", "rows": rows,
                    "backend": jax.default_backend(), "jax": jax.__version__,
                    "machine": platform.machine()}))


if __name__ == "__main__":
  main()
