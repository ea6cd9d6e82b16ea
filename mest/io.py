"""Atomic file writes for ``mest``: the implementation is :mod:`devices.files` (re-exported here)."""

from devices.files import atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]
