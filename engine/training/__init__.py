"""Pieces of the training run; run.py ties them together (its docstring lists them in order)."""
