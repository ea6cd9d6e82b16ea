"""Error classes of ``schedules/``; every message is one line, meant to be shown as is."""

from __future__ import annotations


class SparseFormatError(ValueError):
    """A weight, a mask or a scheme that a compact format cannot take."""


class TuningDatabaseError(RuntimeError):
    """A tuning database that cannot be read, written or trusted."""


class UnsupportedKernelError(ValueError):
    """A convolution (stride, kernel size, scheme, direction) for which no sparse kernel exists."""


class TuningDatabaseWarning(UserWarning):
    """Part of a tuning database was set aside (kept, renamed) and a fresh part started."""
