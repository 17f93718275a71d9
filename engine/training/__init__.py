"""Pieces of the training run: data and buckets, caches, flow-matching math, optimizers."""
