"""Thread settings shared by the TVM kernels and PyTorch, so their pools do not fight.

Measured here (``shared/notes/tvm.md``): with both TVM's pool and PyTorch's OpenMP pool spinning on
the same 2 cores a training step took twice as long; ``OMP_WAIT_POLICY=PASSIVE`` fixes it. OpenMP
reads the variable when it is loaded, so :func:`configure_threads` must run before ``import torch``;
the command-line entry points of ``schedules/`` call it first thing.
"""

from __future__ import annotations

import os


def num_threads() -> int:
    """Worker threads of the kernels: ``TVM_NUM_THREADS`` if set, else the CPU count."""
    return int(os.environ.get("TVM_NUM_THREADS", "0")) or os.cpu_count() or 1


#: The variables :func:`configure_threads` set in this process, with the values it gave them (the
#: user had not set them): ``benchmarks`` removes them again to start a process as its user would.
SET_HERE: dict[str, str] = {}


def configure_threads() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``TVM_NUM_THREADS`` unless the user already chose them."""
    for name, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("TVM_NUM_THREADS", str(num_threads()))):
        if name not in os.environ:
            os.environ[name] = value
            SET_HERE[name] = value
