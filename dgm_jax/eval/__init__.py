"""Evaluation: importance-sampled likelihoods, image grids and sample scores."""
