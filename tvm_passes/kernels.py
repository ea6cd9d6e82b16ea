"""The kernel source of the pipeline: formats, tuned knobs and scheduled kernels from ``schedules``.

:class:`SchedulesKernels` adapts ``schedules`` to :class:`~tvm_passes.lower_sparse_conv.KernelSource`:
formats come from :func:`schedules.formats.pack`, kernels of each direction (forward for the
inference pipeline; forward, grad-input and grad-weight for the training pipeline) from
:func:`schedules.kernels.primfunc`, and knobs from the sparse records of the tuning database
(:class:`schedules.database.TuningDatabase`, the same records training and ``schedules.tune`` use,
keyed by scheme, direction, shapes, stride, density bucket and target). With
:class:`SparseTuning` (trials > 0 and a session that measures for real), a kernel the database lacks
is tuned first by ``schedules``' XGBoost-ranked knob search (:func:`schedules.tune.tune_kernel`) and
the result is committed to the database, so the next compile finds it. Otherwise the defaults are
used and the report says ``default knobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tvm import tirx

from schedules import kernels as sparse_kernels
from schedules.cache import workload
from schedules.database import TuningDatabase
from schedules.errors import SparseFormatError, UnsupportedKernelError
from schedules.formats import SparseFormat, pack
from schedules.tune import KnobRanker, knob_space, tune_kernel

from .errors import CompileError


@dataclass
class SparseTuning:
    """How to tune the sparse kernels the database lacks.

    Attributes
    ----------
    session : devices.sessions.Session
        Where candidates are measured (not an emulator: its times are no speed).
    trials : int
        Candidates measured per kernel at most.
    progress : callable, optional
        Receives one line per tuned kernel.
    """

    session: Any
    trials: int
    progress: Callable[[str], None] | None = None


class SchedulesKernels:
    """Kernels of ``schedules`` for one target.

    Parameters
    ----------
    target : str
        Canonical target name (``x86``, ``arm64``, ``armv7``).
    database : schedules.database.TuningDatabase, optional
        Sparse tuning records (none: default knobs).
    tuning : SparseTuning, optional
        Tune what the database lacks before using it.
    """

    def __init__(self, target: str, database: TuningDatabase | None = None, tuning: SparseTuning | None = None):
        self.target = target
        self.database = database
        self.tuning = tuning if tuning is not None and tuning.trials > 0 else None
        if self.tuning is not None and self.database is None:
            raise CompileError("tuning the sparse kernels needs a tuning database to write to")
        self.ranker = KnobRanker() if self.tuning is not None else None

    def pack(self, scheme: str, weight: torch.Tensor, mask: torch.Tensor) -> SparseFormat:
        """Compact format of ``weight * mask`` (see :func:`schedules.formats.pack`)."""
        try:
            return pack(scheme, weight.to(torch.float32), mask.to(torch.bool))
        except SparseFormatError as exc:
            raise CompileError(f"cannot pack a {scheme} layer: {exc}") from exc

    def _record(self, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int):
        known = self.database.lookup(workload(fmt, direction, x_shape, stride, self.target)) if self.database else None
        if self.tuning is None:
            return known
        budget = min(self.tuning.trials, len(knob_space(fmt, direction, x_shape, stride)))
        if known is not None and known.trials >= budget:
            return known
        if self.tuning.progress:
            self.tuning.progress(f"tuning {fmt.scheme} {direction} kernel {list(fmt.weight_shape)} on {list(x_shape)}, "
                                 f"{budget} trials")
        return tune_kernel(self.tuning.session, self.database, self.ranker, fmt, direction, x_shape, stride,
                           self.tuning.trials).record

    def forward_primfunc(self, fmt: Any, x_shape: tuple[int, ...], stride: int) -> tuple[tirx.PrimFunc, str]:
        """Scheduled forward kernel and a description of its knobs."""
        return self.primfunc("forward", fmt, x_shape, stride)

    def primfunc(self, direction: str, fmt: Any, x_shape: tuple[int, ...], stride: int) -> tuple[tirx.PrimFunc, str]:
        """Scheduled kernel of ``direction`` (``forward``, ``grad_input``, ``grad_weight``) and its knobs.

        ``x_shape`` is the forward input's shape in every direction (see :mod:`schedules.kernels`).
        """
        x_shape = tuple(int(d) for d in x_shape)
        try:
            record = self._record(fmt, direction, x_shape, stride)
            prim = sparse_kernels.primfunc(direction, fmt, x_shape, stride, record.knobs if record else None)
        except UnsupportedKernelError as exc:
            raise CompileError(f"no {fmt.scheme} {direction} kernel for input {list(x_shape)}: {exc}") from exc
        if record is None:
            return prim, "default knobs"
        knobs = ",".join(f"{k}={v}" for k, v in record.knobs.to_json().items())
        return prim, f"tuned {knobs}, {record.trials} trials"
