"""Errors of the ``mest`` package: each carries a one-line message meant for the user."""

from __future__ import annotations


class MestError(Exception):
    """Base of every user-facing error of ``mest``; the CLIs print it on one line and exit 2."""


class ConfigError(MestError, ValueError):
    """A configuration value, preset or profile is invalid."""


class SchemeError(MestError, ValueError):
    """A sparsity scheme cannot take a layer (shape) or a density."""


class DataError(MestError, OSError):
    """A dataset is missing or unreadable."""


class CheckpointError(MestError, OSError):
    """A checkpoint is missing, truncated, foreign or inconsistent."""


class RunDirError(MestError, OSError):
    """A run directory cannot be created or written, or another run holds it."""


class DistributedError(MestError, RuntimeError):
    """The ranks of a torchrun run cannot reach each other, or their states diverged."""
