"""Shared test configuration: hypothesis profiles and float64 for math checks."""

import os

import hypothesis
import jax

jax.config.update("jax_enable_x64", True)

hypothesis.settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile(
    "dev", max_examples=40, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile(
    "thorough", max_examples=300, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
