"""How the kernels walk the non-zeros of each compact format, in each direction.

A kernel sees a format as ``rows`` output rows (output filters, 4-filter groups, or, for grad-input,
input channels); each row owns a range of *entries*; an entry reads one source channel at ``taps``
3x3 positions (1, or 4 for a pattern kernel) and feeds ``group`` output channels (1, or 4 for a
block). :class:`Entries` gives those quantities as TIR expressions of the runtime index buffers, so
the templates of :mod:`schedules.kernels.gather_conv` and :mod:`schedules.kernels.sampled_grad` are
written once for every scheme. Only shapes and dtypes of the buffers shape the code; their contents
are runtime data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import tvm
from tvm import tirx

from schedules.errors import UnsupportedKernelError
from schedules.formats import KERNEL_TAPS, SparseFormat

Buffers = dict[str, tirx.Buffer]
Expr = tvm.ir.expr.Expr


@dataclass(frozen=True)
class BufferSpec:
    """Name, shape and dtype of one runtime buffer of a kernel."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Entries:
    """The non-zero walk of one format in one direction (see the module docstring).

    Attributes
    ----------
    params : tuple of BufferSpec
        The format's buffers for this direction, in argument order.
    rows, group, taps : int
        Output rows, output channels per entry, 3x3 positions per entry.
    src_channels : int
        Channels of the tensor the entries read (input for forward, output for grad-input).
    row_range : callable
        ``(buffers, row) -> (begin, end)`` of the row's entries.
    channel : callable
        ``(buffers, entry) -> source channel``.
    tap : callable
        ``(buffers, entry, t) -> kh * 3 + kw`` of the entry's ``t``-th position.
    value_slot : callable
        ``(buffers, entry, t, g) -> index into values`` of the weight at position ``t`` feeding
        output channel ``g`` of the row's group.
    class_range : callable or None
        ``(buffers, row, parity_class) -> (begin, end)`` of the row's entries feeding one output
        parity of a stride-2 transposed conv (the transposed walks only).
    """

    params: tuple[BufferSpec, ...]
    rows: int
    group: int
    taps: int
    count: int
    src_channels: int
    row_range: Callable[[Buffers, Expr], tuple[Expr, Expr]]
    channel: Callable[[Buffers, Expr], Expr]
    tap: Callable[[Buffers, Expr, int], Expr]
    value_slot: Callable[[Buffers, Expr, int, int], Expr]
    class_range: Callable[[Buffers, Expr, int], tuple[Expr, Expr]] | None = None


def _i32(expr: Expr) -> Expr:
    return expr.astype("int32")


def _specs(fmt: SparseFormat, direction: str) -> tuple[BufferSpec, ...]:
    specs = []
    for name, array in fmt.buffers(direction).items():
        dtype = "float32" if isinstance(array, torch.Tensor) else str(np.dtype(array.dtype))
        specs.append(BufferSpec(name, tuple(int(s) for s in array.shape), dtype))
    return tuple(specs)


def _csr(ptr: str) -> Callable[[Buffers, Expr], tuple[Expr, Expr]]:
    return lambda b, row: (_i32(b[ptr][row]), _i32(b[ptr][row + 1]))


def _transposed_positions(fmt: SparseFormat, direction: str) -> Entries:
    out_channels, in_channels = fmt.weight_shape[:2]
    return Entries(
        params=_specs(fmt, direction),
        rows=in_channels,
        group=1,
        taps=1,
        count=len(fmt.indices["t_positions"]),
        src_channels=out_channels,
        row_range=lambda b, row: (_i32(b["t_row_ptr"][4 * row]), _i32(b["t_row_ptr"][4 * row + 4])),
        channel=lambda b, e: _i32(b["t_positions"][e]) // KERNEL_TAPS,
        tap=lambda b, e, t: _i32(b["t_positions"][e]) % KERNEL_TAPS,
        value_slot=lambda b, e, t, g: _i32(b["t_perm"][e]),
        class_range=lambda b, row, c: (_i32(b["t_row_ptr"][4 * row + c]), _i32(b["t_row_ptr"][4 * row + c + 1])),
    )


def _irregular(fmt: SparseFormat, direction: str) -> Entries:
    if direction == "grad_input":
        return _transposed_positions(fmt, direction)
    out_channels, in_channels = fmt.weight_shape[:2]
    return Entries(
        params=_specs(fmt, direction),
        rows=out_channels,
        group=1,
        taps=1,
        count=len(fmt.indices["positions"]),
        src_channels=in_channels,
        row_range=_csr("row_ptr"),
        channel=lambda b, e: _i32(b["positions"][e]) // KERNEL_TAPS,
        tap=lambda b, e, t: _i32(b["positions"][e]) % KERNEL_TAPS,
        value_slot=lambda b, e, t, g: e,
    )


def _block(fmt: SparseFormat, direction: str) -> Entries:
    if direction == "grad_input":
        return _transposed_positions(fmt, direction)
    out_channels, in_channels = fmt.weight_shape[:2]
    return Entries(
        params=_specs(fmt, direction),
        rows=out_channels // 4,
        group=4,
        taps=1,
        count=len(fmt.indices["positions"]),
        src_channels=in_channels,
        row_range=_csr("block_ptr"),
        channel=lambda b, e: _i32(b["positions"][e]) // KERNEL_TAPS,
        tap=lambda b, e, t: _i32(b["positions"][e]) % KERNEL_TAPS,
        value_slot=lambda b, e, t, g: e * 4 + g,
    )


def _pattern(fmt: SparseFormat, direction: str) -> Entries:
    if direction == "grad_input":
        return _transposed_positions(fmt, direction)
    out_channels, in_channels = fmt.weight_shape[:2]
    per_filter = fmt.kernels_per_filter
    return Entries(
        params=_specs(fmt, direction),
        rows=out_channels,
        group=1,
        taps=4,
        count=len(fmt.indices["channels"]),
        src_channels=in_channels,
        row_range=lambda b, row: (row * per_filter, row * per_filter + per_filter),
        channel=lambda b, e: _i32(b["channels"][e]),
        tap=lambda b, e, t: _i32(b["taps"][_i32(b["pattern_ids"][e]), t]),
        value_slot=lambda b, e, t, g: e * 4 + t,
    )


_WALKERS = {"irregular": _irregular, "block": _block, "pattern": _pattern}


def entries(fmt: SparseFormat, direction: str) -> Entries:
    """The non-zero walk of ``fmt`` for ``direction``.

    Parameters
    ----------
    fmt : SparseFormat
        A packed format (only its shapes and dtypes are used).
    direction : str
        ``"forward"``, ``"grad_input"`` or ``"grad_weight"`` (which walks the forward structure).

    Returns
    -------
    Entries
        The walk.

    Raises
    ------
    UnsupportedKernelError
        For the channel scheme, which runs PyTorch's dense conv on the compacted weight.
    """
    if fmt.scheme not in _WALKERS:
        raise UnsupportedKernelError(f"scheme {fmt.scheme!r} has no TVM kernel; it runs PyTorch's dense conv on the compacted weight")
    return _WALKERS[fmt.scheme](fmt, direction)
