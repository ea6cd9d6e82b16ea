"""MEST: memory-economic sparse training (models, schemes, schedules, trainer, compile command).

Importing ``mest`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose otherwise) before torch
loads: TVM's thread pool and PyTorch's OpenMP pool must not both spin on the same cores (see
:mod:`schedules.threads`); the benchmarks start dense PyTorch without it, as its user would. Under
``torchrun`` it also sets ``TORCH_CPP_LOG_LEVEL=FATAL`` (unless chosen): c10d's C++ logger repeats a
failure of the process group as pages of backtrace, which :mod:`mest.distributed` reports once, on
one ``error:`` line.
"""

import os

from schedules.threads import configure_threads

configure_threads()
if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
