"""Synthetic data of section 4.5.1: the Gaussian-mixture toy and Poisson factor analysis.

Gaussian mixture (4.55)-(4.60): ``z ~ 0.5 N(mu, I) + 0.5 N(-mu, I)`` and
``x ~ N(theta z, sigma^2 I)``. Its posterior is exactly a two-component mixture:
both components share the precision ``Sigma = theta^T theta / sigma^2 + I``
(4.57), component c has mean ``Sigma^{-1} (theta^T x / sigma^2 + mu_c)`` and
weight proportional to ``0.5 N(x; theta mu_c, theta theta^T + sigma^2 I)``.
(The printed (4.57)-(4.60) have sign slips: ``- mu_c`` for ``+ mu_c``, and
``exp{p_c}`` for ``exp{-p_c / 2}``; the formulas here follow from Gaussian
conjugacy and are tested against a numerical posterior.) The dissertation's
setting is ``theta = [[2, -1], [1, -2]]``, ``sigma = 0.1``, ``mu = [5, 5]``,
10,000 training and 10 test points; the 'bimodal' setting observes only
``z_1 - z_2`` (``theta = [[1, -1]]``), so both modes keep equal weight.

Poisson factor analysis (Zhou et al., 2012): ``x ~ Pois(Phi z)`` with factor
loadings ``Phi`` (columns ~ Dirichlet) and factor scores ``z ~ Gamma``. The
dissertation fits 20 Newsgroups with ``Phi`` fixed at an MCMC estimate; here the
loadings are drawn, stored in ``extras``, and the data generated from them,
with the 20 Newsgroups sizes (P = 2,000 words, V = 128 factors) as 'paper' and
a 'toy' (P = 50, V = 5, overlapping loadings) for the posterior check.

Colour images (``load_synthetic_color32``): labelled 32x32 RGB 8-bit images
shaped like CIFAR-10 (chapter 5, section 5.3.3), so the CIFAR-10 configuration
(``configs/cifar10.py:smoke``) runs anywhere: each class is a blocky random
colour template, each image its class's template plus Gaussian noise, rounded
to the 256 levels.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dgm_jax.data.registry import SPLITS, DataError, Dataset

__all__ = ["load_gmm", "load_pfa", "load_synthetic_color32", "gmm_exact_posterior",
           "gmm_posterior_sample", "GMM_SETTINGS", "PFA_SETTINGS", "COLOR32_SETTINGS"]

GMM_SETTINGS = {
    "paper": dict(theta=((2.0, -1.0), (1.0, -2.0)), sigma=0.1, mu=(5.0, 5.0),
                  num_train=10_000, num_valid=1_000, num_test=10),
    "bimodal": dict(theta=((1.0, -1.0),), sigma=0.1, mu=(5.0, 5.0),
                    num_train=10_000, num_valid=1_000, num_test=10),
}

PFA_SETTINGS = {
    "paper": dict(vocab_size=2_000, num_factors=128, num_train=10_314, num_valid=1_000,
                  num_test=7_531, concentration=0.1, factor_shape=0.1, factor_rate=0.1),
    "small": dict(vocab_size=100, num_factors=10, num_train=2_000, num_valid=200,
                  num_test=200, concentration=0.1, factor_shape=0.5, factor_rate=0.05),
    # The 4.5.1 check (configs/pfa.py): overlapping loadings correlate the factor scores.
    "toy": dict(vocab_size=50, num_factors=5, num_train=5_000, num_valid=200,
                num_test=20, concentration=1.0, factor_shape=2.0, factor_rate=0.1),
}

COLOR32_SETTINGS = {
    "small": dict(num_train=1_000, num_valid=200, num_test=200, num_classes=10,
                  template_cells=4, noise_std=0.1),
}


def load_gmm(data_dir=None, *, seed=0, setting="paper", theta=None, sigma=None, mu=None,
             num_train=None, num_valid=None, num_test=None):
  """Draws the Gaussian-mixture toy of (4.55).

  Args:
    data_dir: ignored (the data is synthetic).
    seed: each split is drawn from its own stream ``default_rng([seed, i])``,
      so changing one split's size leaves the others unchanged.
    setting: 'paper' or 'bimodal' (see ``GMM_SETTINGS``); the other
      arguments override single entries of it.
    theta: decoder matrix ``[Dx, Dz]``.
    sigma: observation noise standard deviation.
    mu: ``[Dz]``, the prior components are centered at ``mu`` and ``-mu``.
    num_train, num_valid, num_test: split sizes.

  Returns:
    ``Dataset`` 'gmm': float32 ``[N, Dx]`` observations (kind 'continuous');
    labels are the prior component (0 for ``+mu``, 1 for ``-mu``); extras hold
    ``theta``, ``sigma``, ``mu``, ``setting``, the latents ``{split: [N, Dz]}``
    and ``test_posterior`` (``log_weights`` [N, 2], ``means`` [N, 2, Dz],
    ``covs`` [N, 2, Dz, Dz]) of the test points.

  Raises:
    DataError: unknown setting or inconsistent parameters.
  """
  del data_dir
  params = _resolve("gmm", GMM_SETTINGS, setting, theta=theta, sigma=sigma, mu=mu,
                    num_train=num_train, num_valid=num_valid, num_test=num_test)
  theta = np.asarray(params["theta"], np.float64)
  mu = np.asarray(params["mu"], np.float64)
  sigma = float(params["sigma"])
  if theta.ndim != 2 or mu.shape != theta.shape[1:] or not sigma > 0:
    raise DataError(f"gmm needs theta [Dx, Dz], mu [Dz] and sigma > 0; got theta {theta.shape}, "
                    f"mu {mu.shape}, sigma {sigma}")
  splits, labels, latents = {}, {}, {}
  for index, split in enumerate(SPLITS):
    rng = np.random.default_rng([seed, index])
    count = params[f"num_{split}"]
    component = rng.integers(0, 2, count)
    z = np.where(component[:, None] == 0, mu, -mu) + rng.standard_normal((count, mu.size))
    x = z @ theta.T + sigma * rng.standard_normal((count, theta.shape[0]))
    splits[split], labels[split] = x.astype(np.float32), component.astype(np.int32)
    latents[split] = z.astype(np.float32)
  # One compiled call, not dozens of eagerly dispatched ops (1.5 s -> 0.2 s).
  posterior = jax.jit(gmm_exact_posterior)(splits["test"].astype(np.float64), theta, sigma, mu)
  extras = dict(setting=setting, theta=theta, sigma=sigma, mu=mu, latents=latents,
                test_posterior=dict(zip(("log_weights", "means", "covs"),
                                        (np.asarray(a) for a in posterior))))
  return Dataset(name="gmm", splits=splits, labels=labels, kind="continuous",
                 source=f"synthetic (gmm, setting={setting}, seed={seed})", extras=extras)


def load_pfa(data_dir=None, *, seed=0, setting="paper", vocab_size=None, num_factors=None,
             num_train=None, num_valid=None, num_test=None, concentration=None,
             factor_shape=None, factor_rate=None):
  """Draws Poisson factor analysis counts ``x ~ Pois(Phi z)``.

  Args:
    data_dir: ignored (the data is synthetic).
    seed: the loadings come from ``default_rng([seed, 0])``, split i from
      ``default_rng([seed, i + 1])``.
    setting: 'paper' (20 Newsgroups sizes), 'small' or 'toy' (the posterior
      check of ``configs/pfa.py``; see ``PFA_SETTINGS``); the other arguments
      override single entries of it.
    vocab_size: P, the dimension of x.
    num_factors: V, the dimension of z.
    num_train, num_valid, num_test: split sizes.
    concentration: symmetric Dirichlet parameter of each column of Phi.
    factor_shape, factor_rate: Gamma prior of each factor score.

  Returns:
    ``Dataset`` 'pfa': float32 counts ``[N, P]`` (kind 'counts'), no labels;
    extras hold ``loadings`` Phi ``[P, V]`` (columns sum to one), the prior
    parameters and the latents ``{split: [N, V]}``.

  Raises:
    DataError: unknown setting or non-positive parameters.
  """
  del data_dir
  params = _resolve("pfa", PFA_SETTINGS, setting, vocab_size=vocab_size,
                    num_factors=num_factors, num_train=num_train, num_valid=num_valid,
                    num_test=num_test, concentration=concentration,
                    factor_shape=factor_shape, factor_rate=factor_rate)
  for name in ("vocab_size", "num_factors", "concentration", "factor_shape", "factor_rate"):
    if not params[name] > 0:
      raise DataError(f"pfa option {name} must be positive, got {params[name]}")
  loadings = np.random.default_rng([seed, 0]).dirichlet(
      np.full(params["vocab_size"], float(params["concentration"])), size=params["num_factors"]).T
  splits, labels, latents = {}, {}, {}
  for index, split in enumerate(SPLITS):
    rng = np.random.default_rng([seed, index + 1])
    z = rng.gamma(params["factor_shape"], 1.0 / params["factor_rate"],
                  (params[f"num_{split}"], params["num_factors"]))
    splits[split] = rng.poisson(z @ loadings.T).astype(np.float32)
    labels[split], latents[split] = None, z.astype(np.float32)
  extras = dict(setting=setting, loadings=loadings, latents=latents,
                **{k: params[k] for k in ("concentration", "factor_shape", "factor_rate")})
  return Dataset(name="pfa", splits=splits, labels=labels, kind="counts",
                 source=f"synthetic (pfa, setting={setting}, seed={seed})", extras=extras)


def load_synthetic_color32(data_dir=None, *, seed=0, setting="small", num_train=None,
                           num_valid=None, num_test=None, num_classes=None,
                           template_cells=None, noise_std=None):
  """Draws labelled 32x32x3 8-bit colour images, deterministic in ``seed``.

  Args:
    data_dir: ignored (the data is synthetic).
    seed: the class templates come from ``default_rng([seed, 0])``, split i
      from ``default_rng([seed, i + 1])``.
    setting: 'small' (see ``COLOR32_SETTINGS``); the other arguments
      override single entries of it.
    num_train, num_valid, num_test: split sizes.
    num_classes: number of classes (templates).
    template_cells: a template is ``template_cells`` x ``template_cells``
      uniform colours in [0.2, 0.8], each cell a square of 32 / cells pixels
      (cells must divide 32).
    noise_std: standard deviation of the per-pixel Gaussian noise.

  Returns:
    ``Dataset`` 'synthetic_color32': float32 ``[N, 32, 32, 3]`` on the levels
    k / 255, int32 labels uniform over the classes, kind 'color8'; extras hold
    the ``templates`` ``[num_classes, 32, 32, 3]``.

  Raises:
    DataError: unknown setting or invalid parameters.
  """
  del data_dir
  params = _resolve("synthetic_color32", COLOR32_SETTINGS, setting, num_train=num_train,
                    num_valid=num_valid, num_test=num_test, num_classes=num_classes,
                    template_cells=template_cells, noise_std=noise_std)
  size, cells = 32, params["template_cells"]
  if not (params["num_classes"] >= 1 and cells >= 1 and size % cells == 0
          and params["noise_std"] >= 0):
    raise DataError(f"synthetic_color32 needs num_classes >= 1, template_cells dividing {size} "
                    f"and noise_std >= 0; got {params['num_classes']}, {cells}, "
                    f"{params['noise_std']}")
  coarse = np.random.default_rng([seed, 0]).uniform(
      0.2, 0.8, (params["num_classes"], cells, cells, 3))
  templates = np.repeat(np.repeat(coarse, size // cells, axis=1), size // cells, axis=2)
  splits, labels = {}, {}
  for index, split in enumerate(SPLITS):
    rng = np.random.default_rng([seed, index + 1])
    count = params[f"num_{split}"]
    labels[split] = rng.integers(0, params["num_classes"], count).astype(np.int32)
    noisy = templates[labels[split]] + params["noise_std"] * rng.standard_normal(
        (count, size, size, 3))
    splits[split] = (np.round(np.clip(noisy, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)
  return Dataset(name="synthetic_color32", splits=splits, labels=labels, kind="color8",
                 source=f"synthetic (synthetic_color32, setting={setting}, seed={seed})",
                 extras=dict(setting=setting, templates=templates.astype(np.float32)))


def gmm_exact_posterior(x, theta, sigma, mu):
  """Exact posterior p(z | x) of the Gaussian-mixture toy, a two-Gaussian mixture.

  Args:
    x: observations ``[N, Dx]``.
    theta: decoder matrix ``[Dx, Dz]``.
    sigma: observation noise standard deviation (scalar).
    mu: ``[Dz]``; the prior is ``0.5 N(mu, I) + 0.5 N(-mu, I)``.

  Returns:
    ``(log_weights, means, covs)``: normalized log component weights
    ``[N, 2]``, component means ``[N, 2, Dz]`` and covariances
    ``[N, 2, Dz, Dz]``; component 0 belongs to ``+mu``, 1 to ``-mu``.
  """
  log_weights, means, cov = _posterior_parts(x, theta, sigma, mu)
  return log_weights, means, jnp.broadcast_to(cov, means.shape + means.shape[-1:])


def gmm_posterior_sample(key, x, theta, sigma, mu, num_samples):
  """Draws from the exact posterior of ``gmm_exact_posterior``.

  Args:
    key: a jax PRNG key.
    x: observations ``[N, Dx]``.
    theta: decoder matrix ``[Dx, Dz]``.
    sigma: observation noise standard deviation.
    mu: ``[Dz]``, center of the first prior component.
    num_samples: draws per observation.

  Returns:
    Samples ``[N, num_samples, Dz]``.
  """
  log_weights, means, cov = _posterior_parts(x, theta, sigma, mu)
  component_key, noise_key = jax.random.split(key)
  num_points, num_latent = means.shape[0], means.shape[-1]
  component = jax.random.categorical(component_key, log_weights[:, None, :],
                                     shape=(num_points, num_samples))
  centers = jnp.take_along_axis(means, component[..., None], axis=1)
  noise = jax.random.normal(noise_key, (num_points, num_samples, num_latent), means.dtype)
  return centers + noise @ jnp.linalg.cholesky(cov).T


def _posterior_parts(x, theta, sigma, mu):
  """Normalized log weights [N, 2], means [N, 2, Dz] and the shared covariance [Dz, Dz]."""
  x = jnp.asarray(x)
  theta, mu = jnp.asarray(theta, x.dtype), jnp.asarray(mu, x.dtype)
  num_observed, num_latent = theta.shape
  centers = jnp.stack([mu, -mu])                                              # mu_c, [2, Dz]
  cov = jnp.linalg.inv(theta.T @ theta / sigma**2 + jnp.eye(num_latent, dtype=x.dtype))
  means = ((x @ theta / sigma**2)[:, None, :] + centers[None]) @ cov          # [N, 2, Dz]
  marginal_cov = theta @ theta.T + sigma**2 * jnp.eye(num_observed, dtype=x.dtype)
  residual = x[:, None, :] - (centers @ theta.T)[None]                       # x - theta mu_c
  # Equal prior weights and a shared marginal covariance: only the quadratic form differs.
  log_likelihood = -0.5 * jnp.einsum("nci,ij,ncj->nc", residual, jnp.linalg.inv(marginal_cov),
                                     residual)
  log_weights = log_likelihood - jax.nn.logsumexp(log_likelihood, axis=1, keepdims=True)
  return log_weights, means, cov


def _resolve(name, settings, setting, **overrides):
  if setting not in settings:
    raise DataError(f"unknown {name} setting {setting!r}; settings: {', '.join(settings)}")
  params = dict(settings[setting])
  params.update({k: v for k, v in overrides.items() if v is not None})
  for key, default in settings[setting].items():  # an option has its default's kind
    params[key] = _of_kind(name, key, params[key], default)
  for split in SPLITS:
    if params[f"num_{split}"] < 1:
      raise DataError(f"{name} option num_{split} must be a positive integer, "
                      f"got {params[f'num_{split}']}")
  return params


def _of_kind(name, key, value, default):
  """``value`` as an integer, a real number or a real array, the kind of ``default``;
  anything else is a DataError naming the option."""
  try:
    if isinstance(default, int):
      if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError("not an integer")
      return int(value)
    if isinstance(default, float):
      if isinstance(value, bool):
        raise ValueError("not a number")
      return float(value)
    return tuple(np.asarray(value, np.float64).tolist())  # rectangular (rows as lists)
  except (TypeError, ValueError) as error:
    kind = ("an integer" if isinstance(default, int) else "a number"
            if isinstance(default, float) else "a rectangular array of numbers")
    raise DataError(f"{name} option {key}={value!r} must be {kind} ({error})") from None
