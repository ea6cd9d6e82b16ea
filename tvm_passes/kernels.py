"""The kernel source of the pipeline: formats and scheduled forward kernels from ``schedules``.

:class:`SchedulesKernels` adapts ``schedules.formats.pack`` and ``schedules.kernels.forward_primfunc``
to :class:`~tvm_passes.lower_sparse_conv.KernelSource`. Knobs come from the sparse records of the
tuning database when ``schedules`` has a record for the layer's (scheme, shape, density, target);
otherwise the kernels' default knobs are used and the report says ``default knobs``.
"""

from __future__ import annotations

from typing import Any

import torch
from tvm import tirx

from schedules import kernels as sparse_kernels
from schedules.errors import SparseFormatError, UnsupportedKernelError
from schedules.formats import SparseFormat, pack

from .errors import CompileError


class SchedulesKernels:
    """Kernels of ``schedules`` for one target.

    Parameters
    ----------
    target : str
        Canonical target name (``x86``, ``arm64``, ``armv7``).
    lookup : callable, optional
        ``(scheme, fmt, x_shape, stride, target) -> Knobs | None``: the tuned knobs of a layer.
    """

    def __init__(self, target: str, lookup=None):
        self.target = target
        self.lookup = lookup

    def pack(self, scheme: str, weight: torch.Tensor, mask: torch.Tensor) -> SparseFormat:
        """Compact format of ``weight * mask`` (see :func:`schedules.formats.pack`)."""
        try:
            return pack(scheme, weight.to(torch.float32), mask.to(torch.bool))
        except SparseFormatError as exc:
            raise CompileError(f"cannot pack a {scheme} layer: {exc}") from exc

    def forward_primfunc(self, fmt: Any, x_shape: tuple[int, ...], stride: int) -> tuple[tirx.PrimFunc, str]:
        """Scheduled forward kernel and a description of its knobs."""
        knobs = self.lookup(fmt.scheme, fmt, x_shape, stride, self.target) if self.lookup else None
        try:
            prim = sparse_kernels.forward_primfunc(fmt, tuple(x_shape), stride, knobs)
        except UnsupportedKernelError as exc:
            raise CompileError(f"no {fmt.scheme} kernel for input {list(x_shape)}: {exc}") from exc
        return prim, "default knobs" if knobs is None else f"tuned knobs {knobs.to_json()}"
