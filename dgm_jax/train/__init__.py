"""The one generic training loop shared by every method (DESIGN sections 3-4)."""

from dgm_jax.train.loop import run

__all__ = ["run"]
