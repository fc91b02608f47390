"""CIFAR-10 (45K/5K/10K, 8-bit RGB): AS-VAE, ALI and VAE with Fig. 5.2's networks (section 5.3.3).

Pixels are 8-bit values with a discretized logistic decoder
(``likelihood='discretized_logistic'``, as in ``configs/fashion_mnist.py``), so
``results.json`` reports ``bits_per_dim``, ``rmse`` and ``classifier_score``
(Table 5.2). The encoder is Gaussian (no flow: "a Gaussian approximation for
CIFAR-10", 5.3). Networks, as read from Fig. 5.2 (``dgm_jax.nets.conv``; the
figure's text is partly garbled in the reference, and this is one reading of it):

  q(z|x)    5x5 conv 16 stride 2, then 3x3 conv 32 and 64 stride 2, each stage
            followed by two unstrided 3x3 convs; a dense layer to (mu_z, log sigma_z^2)
  p(x|z)    a dense layer to 4x4x64, then 3x3 deconv 64, 32, 16 stride 2, each
            followed by two unstrided 3x3 deconvs; a 3x3 conv to (mu_x, log s_x) per pixel
  f(x, z)   5x5 conv 16 and 32 stride 2, global average pooling; an MLP on z;
            concatenated; an MLP (``nets.discriminators``)

with z of 100 features ("100 features" in the figure), ReLU, no batch
normalization, Adam at 1e-4 (5.3). The ``vae`` section is the Gaussian VAE
baseline of Fig. 5.6 with the same encoder and decoder.

Arguments after the colon, comma-separated:
  smoke    tiny networks on ``synthetic_color32`` (labelled synthetic 32x32 8-bit
           RGB images), a few steps: seconds, what CI runs; no CIFAR-10 needed

  python -m experiments.asvae --config=configs/cifar10.py [--config.asvae.variant=r|g]
  python -m experiments.ali --config=configs/cifar10.py
  python -m experiments.vae --config=configs/cifar10.py
  python -m experiments.asvae --config=configs/cifar10.py:smoke --workdir=/tmp/asvae_cifar
"""

from configs import common

STEPS_PER_EPOCH = 450  # 45,000 training images, batch 100
LIKELIHOOD = "discretized_logistic"
SMOKE_DATA = "synthetic_color32"

# Fig. 5.2 (see the module docstring).
FIG_5_2 = dict(
    latent_dim=100, flow_length=0, encoder_arch="conv", decoder_arch="conv",
    encoder_conv_features=(16, 32, 64), decoder_conv_features=(64, 32, 16),
    conv_stage_depth=2, conv_first_kernel_size=5,
    disc_trunk="conv", disc_x_features=(16, 32), disc_kernel_size=5,
    learning_rate=1e-4, disc_learning_rate=1e-4)
# The VAE baseline's share of them: the same encoder, decoder and ReLU, Adam at 1e-4.
VAE_NETS = {k: FIG_5_2[k] for k in (
    "latent_dim", "encoder_arch", "decoder_arch", "encoder_conv_features",
    "decoder_conv_features", "conv_stage_depth", "conv_first_kernel_size")}
VAE_NETS.update(activation="relu", learning_rate=1e-4, lr_schedule="constant")
# The same shapes, a few channels wide.
SMOKE_NETS = dict(
    latent_dim=8, encoder_conv_features=(4, 8), decoder_conv_features=(8, 4),
    conv_stage_depth=1, disc_x_features=(4, 8), disc_z_hidden=(16,), disc_joint_hidden=(16,))


def get_config(arg=None):
  args = common.parse_args(arg, {"smoke"})
  smoke = "smoke" in args
  config = common.base_config("cifar10", batch_size=100)
  config.train.update(num_steps=100 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                      eval_every=10 * STEPS_PER_EPOCH, ckpt_every=5 * STEPS_PER_EPOCH)
  # Decoder passes per NLL chunk: max_chunk x eval batch of 32x32 feature maps.
  config.eval.update(max_chunk=20, valid_importance_samples=100)
  config.asvae = adversarial_section("asvae", smoke)
  config.ali = adversarial_section("ali", smoke)
  config.vae = common.vae_section(likelihood=LIKELIHOOD, **VAE_NETS)
  if smoke:
    common.make_smoke(config)
    config.data.name = SMOKE_DATA
    config.vae.update({k: v for k, v in SMOKE_NETS.items() if k in VAE_NETS})
  return config


def adversarial_section(method, smoke):
  """The ``asvae`` or ``ali`` section with Fig. 5.2's networks (tiny ones for ``smoke``)."""
  section = common.asvae_section(method, likelihood=LIKELIHOOD, **FIG_5_2)
  if smoke:
    section.update(SMOKE_NETS)
  return section
