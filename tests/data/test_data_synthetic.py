"""Synthetic toys of section 4.5.1: the exact GMM posterior against a grid, and the PFA draw."""

import jax
import numpy as np
import pytest

from dgm_jax import data
from dgm_jax.data import synthetic


def grid_posterior(x, theta, sigma, mu, half_width, center, num_points):
  """Prior x likelihood normalized on a 2-D grid: (component weights [2], mean [2], cov [2, 2])."""
  axis = np.linspace(-half_width, half_width, num_points)
  z = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2) + center
  log_likelihood = -0.5 * np.sum((x - z @ theta.T) ** 2, axis=1) / sigma**2
  log_joint = np.stack([log_likelihood - 0.5 * np.sum((z - c) ** 2, axis=1) for c in (mu, -mu)])
  mass = np.exp(log_joint - log_joint.max())
  total = mass.sum()
  density = mass.sum(0) / total
  mean = density @ z
  cov = (z - mean).T @ ((z - mean) * density[:, None])
  return mass.sum(1) / total, mean, cov


CASES = {
    # name: (theta, sigma, mu, x, grid half-width, grid center, points per axis)
    "paper_two_live_components": (np.array([[2.0, -1.0], [1.0, -2.0]]), 0.1, np.array([5.0, 5.0]),
                                  np.array([0.4, 0.5]), 1.0, np.array([0.1, -0.2]), 1201),
    "bimodal_rank_deficient": (np.array([[1.0, -1.0]]), 0.1, np.array([5.0, 5.0]),
                               np.array([0.7]), 11.0, np.zeros(2), 2201),
    "asymmetric_1d": (np.array([[1.0, -0.5]]), 0.3, np.array([1.0, 0.5]),
                      np.array([0.4]), 7.0, np.zeros(2), 1401),
    "wide_2d": (np.array([[1.0, 0.5], [0.2, 1.0]]), 1.0, np.array([1.0, -1.0]),
                np.array([0.3, 0.2]), 8.0, np.zeros(2), 1601),
}


class TestGmmExactPosterior:

  @pytest.mark.parametrize("case", sorted(CASES))
  def test_matches_numerical_posterior(self, case):
    theta, sigma, mu, x, half_width, center, num_points = CASES[case]
    log_weights, means, covs = map(np.asarray,
                                   synthetic.gmm_exact_posterior(x[None], theta, sigma, mu))
    assert log_weights.shape == (1, 2) and means.shape == (1, 2, 2) and covs.shape == (1, 2, 2, 2)
    weights = np.exp(log_weights[0])
    grid_weights, grid_mean, grid_cov = grid_posterior(x, theta, sigma, mu, half_width, center,
                                                       num_points)
    np.testing.assert_allclose(weights, grid_weights, atol=1e-3)
    mean = weights @ means[0]
    np.testing.assert_allclose(mean, grid_mean, atol=1e-3)
    outer = np.einsum("ci,cj->cij", means[0], means[0])
    second_moment = np.einsum("c,cij->ij", weights, covs[0] + outer)
    np.testing.assert_allclose(second_moment - np.outer(mean, mean), grid_cov, atol=1e-3)

  def test_component_weights_are_not_trivial_in_the_checked_cases(self):
    for theta, sigma, mu, x, *_ in CASES.values():
      weights = np.exp(np.asarray(synthetic.gmm_exact_posterior(x[None], theta, sigma, mu)[0]))
      assert 0.05 < weights[0, 0] < 0.95

  def test_samples_match_the_exact_moments(self):
    # Rank-deficient with distinct weights; the modes lie about 5.7 standard deviations apart.
    theta, sigma, mu = np.array([[1.0, -1.0]]), 0.1, np.array([3.0, 1.0])
    x = np.array([[0.3], [-0.5]])
    samples = np.asarray(synthetic.gmm_posterior_sample(jax.random.PRNGKey(0), x, theta, sigma, mu,
                                                        100_000))
    assert samples.shape == (2, 100_000, 2)
    log_weights, means, covs = map(np.asarray, synthetic.gmm_exact_posterior(x, theta, sigma, mu))
    weights = np.exp(log_weights)
    mean = np.einsum("nc,nci->ni", weights, means)
    std = samples.std(axis=1)
    np.testing.assert_allclose(samples.mean(axis=1), mean, atol=5 * std.max() / np.sqrt(100_000))
    # Fraction of draws nearer component 0's mean, against its weight (modes are well apart).
    nearer_first = (np.linalg.norm(samples - means[:, None, 0], axis=-1)
                    < np.linalg.norm(samples - means[:, None, 1], axis=-1)).mean(1)
    np.testing.assert_allclose(nearer_first, weights[:, 0], atol=0.01)
    # Within each component the draws have the exact covariance, here far from diagonal
    # ([[0.5025, 0.4975], [0.4975, 0.5025]]).
    for n in range(2):
      for c in range(2):
        near = samples[n][(np.linalg.norm(samples[n] - means[n, c], axis=-1)
                           < np.linalg.norm(samples[n] - means[n, 1 - c], axis=-1))]
        assert len(near) > 10_000
        np.testing.assert_allclose(np.cov(near.T), covs[n, c], atol=0.015)


class TestLoadGmm:

  def test_paper_setting(self):
    dataset = data.load("gmm", seed=1)
    assert dataset.num_examples == {"train": 10_000, "valid": 1_000, "test": 10}
    assert dataset.shape == (2,) and dataset.kind == "continuous"
    extras = dataset.extras
    np.testing.assert_array_equal(extras["theta"], [[2, -1], [1, -2]])
    assert extras["sigma"] == 0.1
    z, x = extras["latents"]["train"], dataset.splits["train"]
    residual = x - z @ extras["theta"].T
    assert abs(residual.std() - 0.1) < 0.005
    # Component labels: z centered at +mu for label 0, -mu for label 1.
    labels = dataset.labels["train"]
    np.testing.assert_allclose(z[labels == 0].mean(0), [5, 5], atol=0.05)
    np.testing.assert_allclose(z[labels == 1].mean(0), [-5, -5], atol=0.05)
    assert extras["test_posterior"]["means"].shape == (10, 2, 2)

  def test_bimodal_setting_and_overrides(self):
    dataset = data.load("gmm", setting="bimodal", num_train=50, num_test=4)
    assert dataset.shape == (1,)
    assert dataset.num_examples == {"train": 50, "valid": 1000, "test": 4}
    np.testing.assert_allclose(np.exp(dataset.extras["test_posterior"]["log_weights"]), 0.5,
                               rtol=1e-6)

  def test_seed_determines_data_and_sizes_do_not_shift_other_splits(self):
    first, again = data.load("gmm", seed=5), data.load("gmm", seed=5, num_train=7)
    np.testing.assert_array_equal(first.splits["test"], again.splits["test"])
    assert not np.array_equal(first.splits["test"], data.load("gmm", seed=6).splits["test"])

  @pytest.mark.parametrize("options, match", [
      (dict(setting="trimodal"), "unknown gmm setting"),
      (dict(num_test=0), "num_test"),
      (dict(theta=[[1.0, 2.0, 3.0]]), "theta"),
      (dict(theta=[[1.0, 2.0], [3.0]]), "theta=.* must be a rectangular array of numbers"),
      (dict(num_train="abc"), "num_train='abc' must be an integer"),
      (dict(num_train=2.5), "num_train=2.5 must be an integer"),
      (dict(num_train=True), "num_train=True must be an integer"),
      (dict(sigma="x"), "sigma='x' must be a number"),
  ])
  def test_bad_options(self, options, match):
    with pytest.raises(data.DataError, match=match):
      data.load("gmm", **options)


class TestLoadPfa:

  def test_counts_follow_the_loadings(self):
    dataset = data.load("pfa", setting="small", num_train=4000)
    extras = dataset.extras
    loadings = extras["loadings"]
    assert loadings.shape == (100, 10) and dataset.shape == (100,) and dataset.kind == "counts"
    np.testing.assert_allclose(loadings.sum(0), 1.0, rtol=1e-12)
    assert dataset.labels["train"] is None
    x, z = dataset.splits["train"], extras["latents"]["train"]
    np.testing.assert_array_equal(x, np.round(x))
    # Poisson: the conditional mean is Phi z, so the residual is centered with variance Phi z.
    rate = z.astype(np.float64) @ loadings.T
    standardized = (x - rate).sum(1) / np.sqrt(rate.sum(1))
    assert abs(standardized.mean()) < 5 / np.sqrt(len(x)) and abs(standardized.var() - 1) < 0.1
    np.testing.assert_allclose(z.mean(), extras["factor_shape"] / extras["factor_rate"], rtol=0.05)


class TestLoadSyntheticColor32:

  def test_labelled_8bit_colour_images_around_their_class_template(self):
    dataset = data.load("synthetic_color32")
    assert dataset.shape == (32, 32, 3) and dataset.kind == "color8"
    assert dataset.num_examples == {"train": 1000, "valid": 200, "test": 200}
    x, labels = dataset.splits["train"], dataset.labels["train"]
    np.testing.assert_array_equal(x * 255, np.round(x * 255))  # on the 256 levels
    assert set(np.unique(labels)) == set(range(10))
    residual = x.astype(np.float64) - dataset.extras["templates"][labels]
    assert abs(residual.mean()) < 0.01 and residual.std() == pytest.approx(0.1, rel=0.05)
    # 4 x 4 cells of 8 x 8 pixels, one colour each
    template = dataset.extras["templates"][0]
    np.testing.assert_array_equal(template[:8, :8], np.broadcast_to(template[0, 0], (8, 8, 3)))

  def test_seed_determines_the_data(self):
    a, b = data.load("synthetic_color32", seed=3), data.load("synthetic_color32", seed=3)
    c = data.load("synthetic_color32", seed=4, num_train=10)
    np.testing.assert_array_equal(a.splits["test"], b.splits["test"])
    np.testing.assert_array_equal(a.labels["test"], b.labels["test"])
    assert not np.array_equal(a.splits["test"], c.splits["test"])
    assert c.num_examples["train"] == 10

  @pytest.mark.parametrize("options,match", [
      (dict(template_cells=5), "template_cells dividing 32"),
      (dict(num_test=0), "num_test must be a positive integer"),
      (dict(setting="large"), "unknown synthetic_color32 setting"),
      (dict(num_classes=2.5), "num_classes=2.5 must be an integer"),
      (dict(noise_std=[0.1]), r"noise_std=\[0.1\] must be a number"),
  ])
  def test_bad_options(self, options, match):
    with pytest.raises(data.DataError, match=match):
      data.load("synthetic_color32", **options)
