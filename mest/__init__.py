"""MEST: memory-economic sparse training (models, schemes, schedules, trainer, compile command).

Importing ``mest`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose otherwise) before torch
loads: TVM's thread pool and PyTorch's OpenMP pool must not both spin on the same cores (see
:mod:`schedules.threads`). The benchmarks start dense PyTorch without it, as its user would.
"""

from schedules.threads import configure_threads

configure_threads()
