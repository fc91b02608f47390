"""Flax linen modules: networks only (no losses, no optimizers)."""
