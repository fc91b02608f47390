"""MNIST (50K/10K/10K, dynamically binarized): the VAE / IWAE baselines of section 4.5.2.

Arguments after the colon, comma-separated:
  smoke    a few steps and a tiny evaluation (seconds; what CI runs)
  paper    Burda et al.'s full schedule: 3,280 epochs, lr 1e-3 * 10^(-i/7)
  iwae     the IWAE objective with k = 5 (``vae`` section)
  viwae    the Stein VIWAE (``stein_vae`` section, importance weighted)
  semi     semi-supervised classification (4.5.3, Table 4.3) for ``vae`` and ``stein_vae``:
           the FNN of Kingma et al. (2014), two layers of 600 softplus units and z of 50,
           100 labels per class (``--config.stein_vae.labels_per_class=10`` for the
           10-label column), 100 epochs
  cnn      with ``semi``: the all-convolutional nets instead (32 and 64 5x5 kernels of stride 2,
           leaky ReLU; the decoder mirrors them with transposed convolutions)
  precond  the Stein VAE with the Gauss-Newton preconditioned kernel (not in the dissertation;
           README): ``preconditioner=gauss_newton``, alpha = 16 for M = 10 (2.4 with ``paper``'s
           M = 100; both put the few-particle fixed point at the posterior's scale,
           ``tests/test_svgd.py``), the median bandwidth, SVGD step 1e-2 and the VAE baseline's
           Adam 1e-3 decaying geometrically to 1e-4. Set ``repulsion_scale`` yourself when you
           change ``num_particles`` on the command line.
  entropy  ``precond`` with q's entropy in the fit (not in the dissertation; README): the fit's
           errors measured by the Gauss-Newton precision (``fit_metric='precision'``), the
           dissertation's repulsion alpha = 1 and ``entropy_weight=1``, which together put the
           few-particle fixed point at the posterior's variance for any M (``tests/test_svgd.py``);
           with ``viwae`` the entropy's codes are weighed by their importance weights
           (``entropy_weights='importance'``; ``=uniform`` gives the runs before 2026-12-06)
  location_scale
           the Stein encoder's output read as a location and a log-variance,
           ``z = m + exp(v / 2) xi`` (``encoder_output='location_scale'``; not in the
           dissertation, README): it starts as the Gaussian VAE's encoder and its noise
           input bends q away from a Gaussian. Measured with ``entropy``
           (``:entropy,location_scale``)
  refine   three SVGD moves per iteration and the decoder's gradient of (4.1) at the moved
           particles (``svgd_steps=3``, ``decoder_codes='moved'``; not in the dissertation,
           README): the decoder learns from q's draws after SVGD has moved them.
           The unsupervised Stein VAE only; measured with ``entropy,location_scale``
           (README, "Refined particles")
  ch5      the chapter-5 VAE baseline: the ``vae`` section takes the ``asvae`` section's nets
           and optimizer (z of 64, 200-200 ReLU, Adam 1e-3, beta1 0.5)

  python -m experiments.vae --config=configs/mnist.py:iwae --config.vae.num_samples=50
"""

from configs import common

STEPS_PER_EPOCH = 500  # 50,000 training images, batch 100
# alpha putting the amortized fixed point of M particles in d = 50 at the posterior's variance
# (RBF kernel, median bandwidth; tests/test_svgd.py measures 10 -> 16)
PRECONDITIONED_ALPHA = {10: 16.0, 100: 2.4}


def get_config(arg=None):
  args = common.parse_args(arg, {"smoke", "paper", "iwae", "viwae", "semi", "cnn", "ch5",
                                "precond", "entropy", "location_scale", "refine"})
  config = common.base_config("mnist", batch_size=100)
  # 700 epochs: the VAE's test NLL reaches 88 nats in 32 minutes on 2 CPU cores (README). A Stein
  # VAE or AS-VAE epoch costs several times a VAE epoch: set --config.train.num_steps to taste.
  config.train.update(num_steps=700 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                      eval_every=25 * STEPS_PER_EPOCH, ckpt_every=5 * STEPS_PER_EPOCH)
  config.vae = common.vae_section()
  config.stein_vae = common.stein_vae_section()
  config.asvae = common.asvae_section("asvae", smoke="smoke" in args, paper="paper" in args)
  config.ali = common.asvae_section("ali", smoke="smoke" in args, paper="paper" in args)
  if "paper" not in args:
    # Binary MNIST's AS-VAE (README, "the samples' class mix"): the encoder reads the decoder
    # pairs' Bernoulli draws, and R1 + R2 penalties keep the discriminators from winning
    # outright. Together they give even classes and confident samples; neither is in the
    # dissertation (``paper`` has the relaxed read and no penalty).
    config.asvae.update(decoder_pair_encoder_input="binary", disc_gradient_penalty=10.0)
  if "viwae" in args:
    config.stein_vae.importance_weighted = True
  if "iwae" in args:
    config.vae.update(objective="iwae", num_samples=5)
  if "semi" in args:
    semi = dict(semi_supervised=True, latent_dim=50, activation="softplus")
    config.vae.update(hidden_sizes=(600, 600), **semi)
    config.stein_vae.update(encoder_hidden=(600, 600), decoder_hidden=(600, 600), **semi)
    config.train.update(num_steps=100 * STEPS_PER_EPOCH, eval_every=10 * STEPS_PER_EPOCH)
  if "cnn" in args:
    if "semi" not in args:
      raise ValueError("the config argument 'cnn' goes with 'semi' (the nets of 4.5.3)")
    for section in (config.vae, config.stein_vae):
      section.update(encoder_arch="conv", decoder_arch="conv", activation="leaky_relu",
                     conv_first_kernel_size=5, conv_kernel_size=5)
  if "paper" in args:
    config.train.num_steps = 3280 * STEPS_PER_EPOCH
    config.train.eval_every = 100 * STEPS_PER_EPOCH
    config.vae.lr_schedule = "burda"
    config.stein_vae.num_particles = 100
  if "precond" in args or "entropy" in args:
    config.stein_vae.update(
        preconditioner="gauss_newton", repulsion_scale=PRECONDITIONED_ALPHA[
            config.stein_vae.num_particles], bandwidth_convention="median", svgd_step_size=1e-2,
        learning_rate=1e-3, lr_schedule="geometric", final_lr_fraction=0.1)
  if "entropy" in args:
    config.stein_vae.update(fit_metric="precision", repulsion_scale=1.0, entropy_weight=1.0)
    if "viwae" in args:  # the entropy weighed as the weighted move weighs its pull
      config.stein_vae.entropy_weights = "importance"
  if "location_scale" in args:
    config.stein_vae.encoder_output = "location_scale"
  if "refine" in args:
    if "viwae" in args or "semi" in args:
      raise ValueError("the config argument 'refine' goes with the unsupervised Stein VAE, not "
                       "with 'viwae' or 'semi' (moved particles have no density for the "
                       "importance weights; the label term keeps one move)")
    config.stein_vae.update(svgd_steps=3, decoder_codes="moved")
  if "ch5" in args:
    common.match_vae_to_asvae(config)
  if "smoke" in args:
    common.make_smoke(config)
    config.stein_vae.update(num_particles=4, latent_dim=8, encoder_hidden=(32,),
                            decoder_hidden=(32,), eval_elbo_samples=2)
    if "semi" in args:
      config.vae.update(hidden_sizes=(32,), labels_per_class=5, labeled_batch_size=8)
      config.stein_vae.update(labels_per_class=5, labeled_batch_size=8)
    if "cnn" in args:
      for section in (config.vae, config.stein_vae):
        section.update(encoder_conv_features=(4, 8), decoder_conv_features=(8, 4))
  return config
