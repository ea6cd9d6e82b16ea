"""Thread settings shared by the TVM kernels and PyTorch, so their pools do not fight.

Measured here (``shared/notes/tvm.md``): with both TVM's pool and PyTorch's OpenMP pool spinning on
the same 2 cores a training step took twice as long; ``OMP_WAIT_POLICY=PASSIVE`` fixes it. OpenMP
reads the variable when it is loaded, so :func:`configure_threads` must run before ``import torch``;
the command-line entry points of ``schedules/`` call it first thing.
"""

from __future__ import annotations

import os


def num_threads() -> int:
    """Worker threads of the kernels: ``TVM_NUM_THREADS`` if set, else ``OMP_NUM_THREADS`` (what
    ``torchrun`` gives each of several workers on one machine: 1), else the CPU count."""
    for variable in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(variable, "").isdigit() and int(os.environ[variable]) > 0:
            return int(os.environ[variable])
    return os.cpu_count() or 1


def configure_threads() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``TVM_NUM_THREADS`` unless the user already chose them."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TVM_NUM_THREADS", str(num_threads()))
