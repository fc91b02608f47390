"""The Poisson factor analysis check of section 4.5.1 (Fig. 4.2): Stein VAE and VAE against Gibbs.

Counts ``x ~ Pois(Phi z)`` with the loadings Phi ``[P, V]`` fixed and a
``Gamma(shape, rate)`` prior on each factor score ``z_v``. The posterior has
no closed form, so the ground truth is the augmented Gibbs sampler of Zhou et
al. (2012) (:func:`gibbs_sample`) on the dissertation's schedule: 2,000
burn-in sweeps, 2,500 collection sweeps, every 10th kept (here in several
independent chains per document). Only encoders are learned, as in
:mod:`posterior_toy`: the Stein recognition model by one SVGD move of its
codes and K Adam steps on (4.13) per iteration, the Gaussian-encoder VAE on
the reparametrized ELBO with the same budget. Both see ``x / (input_scale *
std(x_train))``.

Both encoders act on the unconstrained ``u = log z`` (``z = exp(u)``), and
their target is the density of u, ``log p(x, exp(u)) + sum_v u_v`` (the last
term is ``log |dz/du|``; :func:`log_joint_unconstrained`). The log map rather
than softplus: with it the Gamma prior becomes the smooth log-gamma density
``shape u - rate e^u`` (for ``shape < 1`` the density of z is unbounded at 0,
that of u is not), a Gaussian encoder is the usual log-normal one, and the
Gibbs conditionals of ``log z`` are exact log-gamma draws, so sampler and
encoders share coordinates. Softplus (``z ~ u`` for large u) would add the
Jacobian ``sigmoid(u)`` and make a Gaussian encoder nearly Gaussian in z, with
no such simplification. Posteriors are compared in z, as Fig. 4.2 shows
them: per test document and factor, the marginal variance of each method's
samples against that of the Gibbs draws (:func:`marginal_variance_errors`).
"""

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from dgm_jax import likelihoods
from dgm_jax.models import posterior_toy

__all__ = [
    "PfaToy",
    "toy_from_dataset",
    "log_joint",
    "log_joint_unconstrained",
    "gibbs_sample",
    "train_stein",
    "train_vae",
    "stein_samples",
    "vae_samples",
    "marginal_moments",
    "marginal_variance_errors",
    "save_marginals_figure",
]

_TINY = 1e-30  # floor of loadings and rates inside logarithms (Dirichlet draws can underflow to 0)


class PfaToy(NamedTuple):
  """The fixed generative model ``x ~ Pois(Phi z)``, ``z_v ~ Gamma(shape, rate)``.

  Attributes:
    loadings: [P, V] factor loadings Phi (nonnegative).
    shape: Gamma shape of each factor score.
    rate: Gamma rate of each factor score.
  """

  loadings: np.ndarray
  shape: float
  rate: float


def toy_from_dataset(data):
  """The ``PfaToy`` stored in the extras of a ``registry.load('pfa')`` dataset."""
  extras = data.extras
  return PfaToy(np.asarray(extras["loadings"]), float(extras["factor_shape"]),
                float(extras["factor_rate"]))


def log_joint(toy, x, z):
  """``log Pois(x | Phi z) + log Gamma(z | shape, rate)`` with the loadings fixed.

  Args:
    toy: the ``PfaToy``.
    x: [..., P] counts (broadcast against z).
    z: [..., V] positive factor scores.

  Returns:
    [...] log joint densities.
  """
  loadings = jnp.asarray(toy.loadings, z.dtype)
  log_lik = jnp.sum(likelihoods.poisson_log_prob(x, jnp.log(z @ loadings.T)), axis=-1)
  log_prior = (toy.shape * math.log(toy.rate) - gammaln(toy.shape)
               + (toy.shape - 1.0) * jnp.log(z) - toy.rate * z)
  return log_lik + jnp.sum(log_prior, axis=-1)


def log_joint_unconstrained(toy, x, u):
  """Log density of ``u = log z`` and x: ``log p(x, exp(u)) + sum_v u_v``.

  Args:
    toy: the ``PfaToy``.
    x: [..., P] counts (broadcast against u).
    u: [..., V] log factor scores.

  Returns:
    [...] log joint densities.
  """
  rate = jnp.exp(u) @ jnp.asarray(toy.loadings, u.dtype).T  # Phi z, [..., P]
  log_lik = jnp.sum(likelihoods.poisson_log_prob(x, jnp.log(jnp.maximum(rate, _TINY))), axis=-1)
  log_prior = (toy.shape * math.log(toy.rate) - gammaln(toy.shape)
               + toy.shape * u - toy.rate * jnp.exp(u))  # log-gamma: Gamma prior + log |dz/du|
  return log_lik + jnp.sum(log_prior, axis=-1)


def gibbs_sample(key, x, loadings, shape, rate, num_burnin=2000, num_draws=2500, thin=10,
                 num_chains=1):
  """Augmented Gibbs sampler of p(z | x) for Poisson factor analysis with Phi fixed.

  One sweep (Zhou et al. 2012): split every count ``x_p`` over the factors,
  ``(x_p1, ..., x_pV) ~ Mult(x_p; phi_pv z_v / sum_v' phi_pv' z_v')``, drawn
  token by token (a multinomial is a sum of independent categoricals), each
  token's factor by inverting its cumulative weights at one uniform; then
  ``z_v ~ Gamma(shape + sum_p x_pv, rate + sum_p phi_pv)``, drawn as
  ``log z_v`` with ``jax.random.loggamma`` so small shapes cannot underflow.
  All documents and chains move together as array operations inside one
  jitted ``lax.scan``; chains start at the prior mean.

  Args:
    key: PRNG key.
    x: [N, P] counts, a concrete (host) array: the documents are turned into
      padded token lists ``[N, L]`` with L the longest document.
    loadings: [P, V] Phi.
    shape, rate: the Gamma prior of each factor score.
    num_burnin: sweeps discarded at the start of each chain.
    num_draws: collection sweeps after burn-in.
    thin: every ``thin``-th collection sweep is kept.
    num_chains: independent chains per document.

  Returns:
    [N, num_chains * (num_draws // thin), V] draws of z, chain by chain.
  """
  words, mask = _tokens(x)
  loadings = jnp.asarray(loadings, jnp.float32)
  num_factors, num_kept = loadings.shape[1], num_draws // thin
  token_log_loadings = jnp.log(jnp.maximum(loadings, _TINY))[words]  # [N, L, V]
  mask = jnp.asarray(mask, jnp.float32)[None, :, :, None]            # [1, N, L, 1]
  log_rate = jnp.log(rate + jnp.sum(loadings, axis=0))               # [V]

  def sweep(log_z, step):  # log_z: [C, N, V]
    split_key, score_key = jax.random.split(jax.random.fold_in(key, step))
    logits = token_log_loadings[None] + log_z[:, :, None, :]          # [C, N, L, V]
    cdf = jnp.cumsum(jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), axis=-1)
    level = jax.random.uniform(split_key, cdf.shape[:-1] + (1,), cdf.dtype) * cdf[..., -1:]
    factor = jnp.sum(cdf[..., :-1] < level, axis=-1)                  # [C, N, L], by inverse cdf
    counts = jnp.sum(jax.nn.one_hot(factor, num_factors) * mask, axis=2)  # sum_p x_pv, [C, N, V]
    return jax.random.loggamma(score_key, shape + counts) - log_rate

  def sweep_and_keep(carry, step):  # collection sweep j = step - num_burnin + 1 kept if thin | j
    log_z, kept = carry
    log_z = sweep(log_z, step)
    collected = step - num_burnin + 1
    slot = jnp.clip(collected // thin - 1, 0, num_kept - 1)
    keep = (collected > 0) & (collected % thin == 0)
    return (log_z, kept.at[slot].set(jnp.where(keep, jnp.exp(log_z), kept[slot]))), None

  @jax.jit
  def run():
    start = jnp.full((num_chains, words.shape[0], num_factors), math.log(shape / rate))
    kept = jnp.zeros((num_kept,) + start.shape, start.dtype)
    (_, kept), _ = jax.lax.scan(sweep_and_keep, (start, kept),
                                jnp.arange(num_burnin + num_kept * thin))
    return jnp.transpose(kept, (2, 1, 0, 3)).reshape(words.shape[0], -1, num_factors)

  return run()


def train_stein(key, x_train, toy, section, num_steps, batch_size):
  """The Stein recognition model ``u = f_eta(x, xi)`` (z = exp(u)), trained by the algorithm of
  4.2 on :func:`log_joint_unconstrained` (``posterior_toy.train_stein_encoder``)."""
  return posterior_toy.train_stein_encoder(
      key, x_train, lambda x, u: log_joint_unconstrained(toy, x, u), toy.loadings.shape[1],
      section, num_steps, batch_size)


def train_vae(key, x_train, toy, section, num_steps, batch_size):
  """A Gaussian encoder q(u | x) (log-normal in z) on the reparametrized ELBO, Phi fixed
  (``posterior_toy.train_vae_encoder``)."""
  return posterior_toy.train_vae_encoder(
      key, x_train, lambda x, u: log_joint_unconstrained(toy, x, u), toy.loadings.shape[1],
      section, num_steps, batch_size)


def stein_samples(params, section, key, x, num_factors, num_samples):
  """[N, S, V] draws ``z = exp(f_eta(x, xi))`` with fresh ``xi`` per document and sample."""
  return jnp.exp(posterior_toy.stein_samples(params, section, key, x, num_factors, num_samples))


def vae_samples(params, section, key, x, num_factors, num_samples):
  """[N, S, V] draws ``z = exp(u)``, ``u ~ q(u | x)`` of the Gaussian encoder."""
  return jnp.exp(posterior_toy.vae_samples(params, section, key, x, num_factors, num_samples))


def marginal_moments(samples):
  """Per-document, per-factor posterior means and variances (ddof 1) of [N, S, V] samples."""
  samples = jnp.asarray(samples)
  return jnp.mean(samples, axis=1), jnp.var(samples, axis=1, ddof=1)


def marginal_variance_errors(samples_by_method, reference):
  """Compares each method's marginal posterior moments with the Gibbs draws'.

  For every test document n and factor v the reference variance ``s_nv`` and
  a method's ``t_nv`` give the ratio ``r_nv = t_nv / s_nv``; averages run
  over all (n, v).

  Args:
    samples_by_method: name -> [N, S, V] samples of z.
    reference: [N, S', V] Gibbs draws.

  Returns:
    (name -> {metric: float}, name -> variances [N, V] (with 'reference')):
    ``var_rel_error`` (mean of ``|r - 1|``; ``var_rel_error_median`` and
    ``var_rel_error_max`` its median and largest over (n, v), and ``var_log_ratio_max`` the
    largest ``|log r|``, which weighs a variance half the reference's like one twice it),
    ``var_ratio`` (mean of r; below 1
    means the variances are underestimated), ``var_ratio_geomean``
    (``exp(mean log r)``), ``mean_rel_error`` (mean relative error of the
    posterior means).
  """
  ref_mean, ref_var = marginal_moments(reference)
  report, variances = {}, {"reference": np.asarray(ref_var)}
  for name, samples in samples_by_method.items():
    mean, var = marginal_moments(samples)
    ratio = var / ref_var
    report[name] = {k: float(v) for k, v in {
        "var_rel_error": jnp.mean(jnp.abs(ratio - 1.0)),
        "var_rel_error_median": jnp.median(jnp.abs(ratio - 1.0)),
        "var_rel_error_max": jnp.max(jnp.abs(ratio - 1.0)),
        "var_log_ratio_max": jnp.max(jnp.abs(jnp.log(ratio))),
        "var_ratio": jnp.mean(ratio),
        "var_ratio_geomean": jnp.exp(jnp.mean(jnp.log(ratio))),
        "mean_rel_error": jnp.mean(jnp.abs(mean - ref_mean) / ref_mean),
    }.items()}
    variances[name] = np.asarray(var)
  return report, variances


def save_marginals_figure(path, samples_by_method, variances, point, num_factors=3,
                          max_dots=500):
  """Fig. 4.2: marginals and pairs of one test document, and every marginal variance.

  Left, a grid over the ``num_factors`` factors with the largest reference
  posterior mean at document ``point``: histograms of each method's marginal
  on the diagonal, pairwise samples below it. Right, every (document, factor)
  variance of each method against the reference's, on log axes.

  Args:
    path: PNG file to write (its folder is created).
    samples_by_method: name -> [N, S, V] samples of z; the first is the
      reference (the Gibbs draws); drawn in this order, with Fig. 4.2's colors
      (MCMC purple, VAE red, Stein VAE green) for 'gibbs', 'vae', 'stein'.
    variances: name -> [N, V] marginal variances, with a 'reference' entry
      (from :func:`marginal_variance_errors`).
    point: index of the test document shown on the left.
    num_factors: factors shown on the left.
    max_dots: samples per method in each pair panel.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  colors = {"gibbs": "tab:purple", "vae": "tab:red", "stein": "tab:green"}
  names = list(samples_by_method)
  color = lambda i, name: colors.get(name, f"C{i}")
  reference = np.asarray(samples_by_method[names[0]][point])
  factors = np.argsort(-reference.mean(0))[:num_factors]
  size = len(factors)
  fig = plt.figure(figsize=(2.6 * size + 4.5, 2.6 * size))
  grid = fig.add_gridspec(size, size + 2)
  for row, fr in enumerate(factors):
    for col, fc in enumerate(factors[:row + 1]):
      ax = fig.add_subplot(grid[row, col])
      for i, name in enumerate(names):
        draws = np.asarray(samples_by_method[name][point])
        if row == col:
          ax.hist(draws[:, fr], bins=40, density=True, histtype="step", color=color(i, name),
                  label=name)
        else:
          ax.scatter(draws[:max_dots, fc], draws[:max_dots, fr], s=2, alpha=0.3,
                     color=color(i, name))
      ax.tick_params(labelsize=6)
      if row == size - 1:
        ax.set_xlabel(f"z{fc}", fontsize=8)
      if col == 0 and row > 0:
        ax.set_ylabel(f"z{fr}", fontsize=8)
  fig.axes[0].legend(fontsize=6)
  fig.axes[0].set_title(f"test document {point}", fontsize=8)
  ax = fig.add_subplot(grid[:, size:])
  ref_var = np.asarray(variances["reference"]).ravel()
  for i, name in enumerate(names[1:], 1):
    ax.scatter(ref_var, np.asarray(variances[name]).ravel(), s=6, alpha=0.6,
               color=color(i, name), label=name)
  bounds = [ref_var.min(), ref_var.max()]
  ax.plot(bounds, bounds, "k--", lw=0.8)
  ax.set_xscale("log")
  ax.set_yscale("log")
  for axis in (ax.xaxis, ax.yaxis):  # ticks at 1, 2, 5 x 10^k, in plain numbers
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel(f"{names[0]} posterior variance", fontsize=8)
  ax.set_ylabel("method posterior variance", fontsize=8)
  ax.set_title("every test document and factor", fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _tokens(x):
  """[N, P] counts -> word index [N, L] and mask [N, L] of each document's tokens (host numpy)."""
  counts = np.asarray(x).astype(np.int64)
  if counts.ndim != 2 or np.any(counts < 0) or not np.array_equal(counts, np.asarray(x)):
    raise ValueError(f"gibbs_sample needs nonnegative integer counts [N, P], got {np.shape(x)}")
  num_docs, vocab_size = counts.shape
  lengths = counts.sum(1)
  flat = counts.ravel()
  word = np.repeat(np.tile(np.arange(vocab_size), num_docs), flat)
  doc = np.repeat(np.repeat(np.arange(num_docs), vocab_size), flat)
  position = np.arange(word.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  words = np.zeros((num_docs, max(int(lengths.max(initial=0)), 1)), np.int32)
  mask = np.zeros(words.shape, bool)
  words[doc, position], mask[doc, position] = word, True
  return words, mask
