"""Compact sparse formats, sparse TIR kernels, their tuner and tuning database."""
