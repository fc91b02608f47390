"""dgm_jax: deep generative models of Yunchen Pu's dissertation in JAX/Flax.

The package is layered as in `DESIGN.md`: pure math modules (``likelihoods``,
``bounds``, ``kernels``, ``svgd``, ``unpooling``, ``adversarial``, ``svm``,
``flows``) at the bottom, flax modules in ``nets``, methods in ``models``, and
the one generic training loop in ``train``.
"""

__version__ = "0.1.0"
