"""How the kernels walk the non-zeros of each compact format, in each direction.

A kernel sees a format as ``rows`` output rows (output filters, 4-filter groups, or, for grad-input,
input channels); each row owns a range of *entries*; an entry reads one source channel at ``taps``
3x3 positions (1, or 4 for a pattern kernel) and feeds ``group`` output channels (1, or 4 for a
block). :class:`Entries` gives those quantities as TIR expressions of the runtime index buffers, so
the templates of :mod:`schedules.kernels.gather_conv` and :mod:`schedules.kernels.sampled_grad` are
written once for every scheme. Each scheme's format builds its own walk
(:meth:`schedules.sparse_format.SparseFormat.entries`, in its file under :mod:`schedules.schemes`) from
the helpers here; the grad-input walk of the transposed structure is the same for all of them. Only shapes and dtypes of the buffers shape the code; their contents
are runtime data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import tvm
from tvm import tirx

from schedules.sparse_format import KERNEL_TAPS, PARITY_CLASSES, SparseFormat

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


def i32(expr: Expr) -> Expr:
    """``expr`` as int32 (index buffers are uint8, uint16 or int32)."""
    return expr.astype("int32")


def buffer_specs(fmt: SparseFormat, direction: str) -> tuple[BufferSpec, ...]:
    """The specs of ``fmt.buffers(direction)``, in argument order."""
    specs = []
    for name, array in fmt.buffers(direction).items():
        dtype = "float32" if isinstance(array, torch.Tensor) else str(np.dtype(array.dtype))
        specs.append(BufferSpec(name, tuple(int(s) for s in array.shape), dtype))
    return tuple(specs)


def csr_range(ptr: str) -> Callable[[Buffers, Expr], tuple[Expr, Expr]]:
    """``row_range`` of a CSR walk whose row pointer is the buffer ``ptr``."""
    return lambda b, row: (i32(b[ptr][row]), i32(b[ptr][row + 1]))


def transposed_walk(fmt: SparseFormat, direction: str) -> Entries:
    """The grad-input walk: CSR over input channels of the ``t_*`` arrays (one weight per entry)."""
    out_channels, in_channels = fmt.weight_shape[:2]
    return Entries(
        params=buffer_specs(fmt, direction),
        rows=in_channels,
        group=1,
        taps=1,
        count=len(fmt.indices["t_positions"]),
        src_channels=out_channels,
        row_range=lambda b, row: (i32(b["t_row_ptr"][PARITY_CLASSES * row]),
                                  i32(b["t_row_ptr"][PARITY_CLASSES * row + PARITY_CLASSES])),
        channel=lambda b, e: i32(b["t_positions"][e]) // KERNEL_TAPS,
        tap=lambda b, e, t: i32(b["t_positions"][e]) % KERNEL_TAPS,
        value_slot=lambda b, e, t, g: i32(b["t_perm"][e]),
        class_range=lambda b, row, c: (i32(b["t_row_ptr"][PARITY_CLASSES * row + c]),
                                       i32(b["t_row_ptr"][PARITY_CLASSES * row + c + 1])),
    )


def position_walk(fmt: SparseFormat, direction: str, ptr: str, group: int) -> Entries:
    """The walk of a CSR of ``positions = i*9 + tap`` over groups of ``group`` output filters.

    Entry ``e`` feeds the ``group`` filters of its row from value slots ``e*group .. e*group+group-1``
    (irregular: groups of 1 filter; block: the 4 filters of a block).
    """
    out_channels, in_channels = fmt.weight_shape[:2]
    return Entries(
        params=buffer_specs(fmt, direction),
        rows=out_channels // group,
        group=group,
        taps=1,
        count=len(fmt.indices["positions"]),
        src_channels=in_channels,
        row_range=csr_range(ptr),
        channel=lambda b, e: i32(b["positions"][e]) // KERNEL_TAPS,
        tap=lambda b, e, t: i32(b["positions"][e]) % KERNEL_TAPS,
        value_slot=lambda b, e, t, g: e * group + g,
    )
