"""MEST: memory-economic sparse training (models, schemes, schedules, trainer, compile command).

Importing ``mest`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose otherwise) before torch
loads: with TVM's thread pool and PyTorch's OpenMP pool both spinning on the same cores, a sparse
layer's step was 100x slower here (see :mod:`schedules.threads`).
"""

from schedules.threads import configure_threads

configure_threads()
