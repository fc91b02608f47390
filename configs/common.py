"""Sections every config shares (DESIGN section 3) and the ``:args`` parser."""

import ml_collections

__all__ = ["base_config", "parse_args", "vae_section"]


def parse_args(arg, allowed):
  """Parses ``'smoke,paper,variant=x'`` into a dict; unknown words are an error."""
  args = {}
  for word in filter(None, (arg or "").split(",")):
    key, _, value = word.partition("=")
    if key not in allowed:
      raise ValueError(f"unknown config argument {key!r}; allowed: {', '.join(sorted(allowed))}")
    args[key] = value or True
  return args


def base_config(dataset, batch_size):
  """seed, data, train and eval sections with production defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = ""
  config.distributed = False
  config.data = ml_collections.ConfigDict(dict(
      name=dataset, data_dir="", batch_size=batch_size, options={}))
  config.train = ml_collections.ConfigDict(dict(
      num_steps=100_000, log_every=500, eval_every=10_000, ckpt_every=5_000, tensorboard=True,
      prefetch_steps=50,  # batches gathered and copied to the devices at once
      # '' (off: the test split sees the final state) or a validation metric, 'nll_nats',
      # 'error_rate' or 'elbo_nats': the test split sees the state that validated best (4.5)
      early_stopping=""))
  config.eval = ml_collections.ConfigDict(dict(
      num_importance_samples=5000,    # K for the test NLL (Burda et al.)
      valid_importance_samples=100,   # K for periodic validation NLL (0: skip)
      batch_size=100, max_chunk=500, binarization_seed=0,
      max_valid_examples=2000,        # periodic validation on the first examples only
      max_test_examples=0,            # 0: the whole test split (else its first examples)
      # Classifier score of samples (the inception score's formula, section 5.3) for labelled
      # images: '' trains (once, cached) the project's classifier on the data set;
      # 'module.path:function' plugs in f(dataset_name) -> probs_fn(images) -> [N, C].
      classifier="", classifier_steps=3000, num_score_samples=10_000))
  return config


def vae_section(**overrides):
  """Burda et al.'s one-stochastic-layer model: 784-200-200-50, tanh, Bernoulli pixels."""
  section = ml_collections.ConfigDict(dict(
      objective="vae", num_samples=1, hidden_sizes=(200, 200), latent_dim=50,
      activation="tanh", learning_rate=1e-3, lr_schedule="geometric", final_lr_fraction=0.1,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-4,
      # 'bernoulli' (binarized pixels) or 'discretized_logistic' (8-bit pixels, 5.3.1); with
      # the latter, dequantize=True trains on uniformly dequantized pixels (5.3.1), False on
      # the discrete likelihood; evaluation is always discrete.
      likelihood="bernoulli", dequantize=True,
      # Semi-supervised (4.4): a label decoder softmax(theta~ z); each step adds
      # labeled_batch_size pairs from a class-balanced subset of labels_per_class per class.
      semi_supervised=False, labels_per_class=100, labeled_batch_size=50,
      # dropout on the encoder's hidden units while training (4.5's one regularizer; MLPs)
      encoder_dropout=0.0,
      # 'mlp' (hidden_sizes) or 'conv' (the all-convolutional nets of 4.5.3, nets.conv)
      encoder_arch="mlp", decoder_arch="mlp", encoder_conv_features=(32, 64),
      decoder_conv_features=(64, 32),
  ))
  section.update(overrides)
  return section


def make_smoke(config):
  """Shrinks a config to seconds: a few steps, tiny evaluation."""
  config.train.update(num_steps=20, log_every=5, eval_every=10, ckpt_every=10, tensorboard=True)
  config.data.batch_size = 16
  config.eval.update(num_importance_samples=8, valid_importance_samples=8, batch_size=32,
                     max_chunk=8, max_valid_examples=64, classifier_steps=20,
                     num_score_samples=64)
  return config


def stein_vae_section(**overrides):
  """Section 4.5.2: z of 50, two deterministic layers of 200 tanh units, Adam at 2e-4.

  ``num_particles`` (M) and the importance-sample count fit a CPU by default; the
  dissertation's M = 100 is the ``:paper`` variant.
  """
  section = ml_collections.ConfigDict(dict(
      latent_dim=50, encoder_hidden=(200, 200), decoder_hidden=(200, 200), activation="tanh",
      num_particles=10, importance_weighted=False, decoder_samples=1, prior_std=1.0,
      svgd_step_size=1e-3, bandwidth_convention="liu_wang", encoder_steps=1,
      # alpha on SVGD's repulsive term: 1 is the dissertation's; above 1 widens the encoder
      # that few particles shrink (models.stein_vae docstring; README: 6 for M = 10, d = 50)
      repulsion_scale=1.0,
      # 'rbf' (the dissertation's) or 'coordinatewise': one SVGD per latent coordinate, whose
      # repulsion does not fade with the dimension (svgd.coordinatewise_svgd_direction)
      kernel="rbf",
      # 'none' (the dissertation's) or 'gauss_newton': the kernel whitened by each example's
      # Gauss-Newton precision at its mean particle (svgd.preconditioned_svgd_direction)
      preconditioner="none",
      # lambda: the fit (4.13) also ascends lambda eps E log|det df/dxi| per example (q's
      # entropy by the change of variables; not in the dissertation, 0 is its fit), estimated
      # on the first entropy_particles particles (models.stein_vae docstring)
      entropy_weight=0.0, entropy_particles=1,
      # how the entropy term weighs those particles: 'uniform' (each 1 / m), or 'importance'
      # (the Stein VIWAE only: each by M times its self-normalized weight, as the move weighs
      # its pull; models.stein_vae docstring, "The VIWAE's entropy")
      entropy_weights="uniform",
      # 'euclidean' (the dissertation's (4.13)) or 'precision': the fit's errors measured by
      # the Gauss-Newton precision Q (needs preconditioner='gauss_newton')
      fit_metric="euclidean",
      # T SVGD moves of the particles per iteration (1: the dissertation's), and where the
      # decoder's gradient of (4.1) is taken: 'initial' (the dissertation's: at the encoder's
      # codes z^(t)) or 'moved' (at the particles after the T moves; models.stein_vae docstring)
      svgd_steps=1, decoder_codes="initial",
      decoder_grad_particles=0,  # particles per example in the gradient of (4.1); 0: all M
      encoder_fit_particles=0,  # particles per example in the encoder's fit (4.13); 0: all M
      eval_elbo_samples=10,
      learning_rate=2e-4, lr_schedule="constant", final_lr_fraction=1.0,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
      # Semi-supervised (4.4): a label decoder softmax(theta~ z); each step adds
      # labeled_batch_size pairs from a class-balanced subset of labels_per_class per class.
      semi_supervised=False, labels_per_class=100, labeled_batch_size=50,
      # dropout on the encoder's hidden units while training (4.5's one regularizer; MLPs),
      # one mask per example shared by its particles
      encoder_dropout=0.0,
      # 'mlp' (the dissertation's f_eta(x, xi): z is the MLP's output) or 'location_scale':
      # z = m + exp(v / 2) xi from the MLP's two halves, noise input weights starting at zero,
      # so f_eta starts as the Gaussian VAE's encoder (nets.recognition; not in the dissertation)
      encoder_output="mlp",
      # 'mlp' (encoder_hidden / decoder_hidden) or 'conv': f_eta(x, xi) as 5x5 stride-2
      # convolutions on [x, noise map] (nets.recognition.NoiseConvEncoder), nets.conv decoder
      encoder_arch="mlp", decoder_arch="mlp", encoder_conv_features=(32, 64),
      decoder_conv_features=(64, 32),
  ))
  section.update(overrides)
  return section


def matched_vae_section(stein_section):
  """The Gaussian-VAE encoder of the posterior toys (4.5.1), matched to a Stein encoder.

  The same network, input scaling and learning rate; as many codes per example as
  particles (``num_samples`` follows ``num_particles``, also under overrides).
  """
  section = ml_collections.ConfigDict(dict(
      hidden_sizes=stein_section.encoder_hidden, activation=stein_section.activation,
      input_scale=stein_section.input_scale, num_samples=0,
      learning_rate=stein_section.learning_rate, lr_schedule="geometric",
      final_lr_fraction=stein_section.final_lr_fraction,
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8))
  section.num_samples = stein_section.get_ref("num_particles")
  return section


def match_vae_to_asvae(config):
  """The chapter-5 VAE baseline: the ``vae`` section takes the ``asvae`` section's
  latent size, MLP widths, activation and optimizer (the ``ch5`` config argument),
  so the two differ only in their objective."""
  asvae = config.asvae
  config.vae.update(latent_dim=asvae.latent_dim, hidden_sizes=tuple(asvae.encoder_hidden),
                    activation=asvae.activation, learning_rate=asvae.learning_rate,
                    lr_schedule=asvae.lr_schedule, final_lr_fraction=asvae.final_lr_fraction,
                    adam_b1=asvae.adam_b1, adam_b2=asvae.adam_b2, adam_eps=asvae.adam_eps)


def asvae_section(method="asvae", smoke=False, paper=False, **overrides):
  """Section 5.3 / Fig. 5.1 for the AS-VAE (``method='asvae'``) or ALI (``'ali'``) on MNIST.

  64 latent features, MLP encoder and decoder (200-200 ReLU), Adam with beta1 =
  0.5 (a GAN-style choice the text does not state). The encoder's planar flow has
  10 layers by default (CPU), 80 with ``paper`` as in 5.3; ALI's encoder is
  Gaussian. The discriminators take an MLP on z and a trunk on x, concatenated,
  then an MLP.

  ``paper`` keeps the dissertation's choices: Adam at 1e-4, Fig. 5.1's trunk (two
  strided 3x3 convolutions and global average pooling) and f_psi1 a plain
  network. Without the figures' batch normalization, ALI's and AS-VAE-g's
  decoders collapse to one image under them (README). The default is what
  trains here: Adam at 1e-3, a fully connected trunk of 256 units, and, for
  the AS-VAE, ``explicit_contrast`` (f_psi1 = log q(z|x) - log p(z) + network:
  the same optimum and objective, an estimator that sees the encoder's KL).
  ``variant`` (AS-VAE only): 'full', 'r' (AS-VAE-r) or 'g' (AS-VAE-g).
  ``encoder_arch`` / ``decoder_arch`` = 'conv' swap the MLPs for the strided
  convolution stages of ``dgm_jax.nets.conv`` (defaults: Fig. 5.1's two stages;
  ``configs/cifar10.py`` sets Fig. 5.2's).
  """
  section = ml_collections.ConfigDict(dict(
      latent_dim=64, encoder_hidden=(200, 200), decoder_hidden=(200, 200), activation="relu",
      encoder_arch="mlp", decoder_arch="mlp",  # 'mlp' or 'conv' (nets.conv)
      encoder_conv_features=(32, 64), decoder_conv_features=(64, 32),  # per stride-2 stage
      conv_stage_depth=0, conv_first_kernel_size=3,  # unstrided convs per stage; first kernel
      flow_length=0 if method == "ali" else (80 if paper else 10), flow_init_scale=0.1,
      relaxation_temperature=0.5,
      decoded_x="sample",  # 8-bit data: 'sample' (a clipped logistic draw) or 'mean' (models.asvae)
      # binary pixels: log q(z|x) of decoder pairs at the relaxed sample ('relaxed'), at its
      # Bernoulli draw ('binary': no decoder gradient through the term), the draw with the
      # relaxed gradient ('straight_through') or two draws with a REINFORCE gradient
      # ('score_function'); models.asvae, README
      decoder_pair_encoder_input="relaxed",
      disc_trunk="mlp", disc_x_features=(256,), disc_z_hidden=(200,),
      disc_joint_hidden=(200,), disc_activation="leaky_relu", disc_kernel_size=3,
      # gamma of a penalty gamma/2 E|grad_(x,z) f|^2 on each discriminator's real and fake
      # pairs (adversarial.logits_and_input_gradient_sq); 0: the dissertation's discriminators
      disc_gradient_penalty=0.0,
      # add log-mean-exp f on each discriminator's negative pairs to (5.14)
      # (adversarial.negative_pair_term; the decoder's and encoder's missing gradients);
      # False: the dissertation's loss
      negative_pair_terms=False,
      learning_rate=1e-3, disc_learning_rate=1e-3, lr_schedule="constant",
      final_lr_fraction=1.0, adam_b1=0.5, adam_b2=0.999, adam_eps=1e-8,
      likelihood="bernoulli", dequantize=True))  # as in vae_section
  if method == "ali":
    section.non_saturating = True
  else:
    section.variant = "full"
    # f_psi1 = log q_phi(z|x) - log p(z) + a learned residual (models.asvae docstring):
    # an estimator of the KL that the discriminator alone misses; not in the dissertation
    # (off under ``paper``).
    section.explicit_contrast = True
  if paper:
    section.update(disc_trunk="conv", disc_x_features=(32, 64), learning_rate=1e-4,
                   disc_learning_rate=1e-4)
    if method != "ali":
      section.explicit_contrast = False
  if smoke:
    section.update(latent_dim=8, encoder_hidden=(32,), decoder_hidden=(32,),
                   encoder_conv_features=(4, 8), decoder_conv_features=(8, 4),
                   flow_length=min(section.flow_length, 2), disc_x_features=(4, 8),
                   disc_z_hidden=(16,), disc_joint_hidden=(16,))
  section.update(overrides)
  return section
