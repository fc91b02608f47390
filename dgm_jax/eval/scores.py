"""Scalar scores of a trained model: active units (Burda et al. 2016), reported beside the
test NLL of the VAE-family runs (4.5.2)."""

import numpy as np

__all__ = ["active_units"]


def active_units(encoder_means, threshold=1e-2):
  """Number of latent dimensions whose posterior mean varies across the data.

  Args:
    encoder_means: [N, D] E_q[z | x_n] over a data split.
    threshold: variance threshold (1e-2, as Burda et al.).

  Returns:
    The count of dimensions with ``Var_x(E_q[z | x]) > threshold``.
  """
  return int(np.sum(np.var(np.asarray(encoder_means, np.float64), axis=0) > threshold))
