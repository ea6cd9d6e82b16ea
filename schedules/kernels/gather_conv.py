"""Gather convolution: the forward and grad-input kernels of the irregular, block and pattern schemes.

Each output row (filter, 4-filter group, or input channel for grad-input) is a sum over its entries of
value x shifted source plane. The schedule follows what measured fast on this machine
(``shared/notes/tvm.md``): parallel over the batch (and over parts of the output channels when the
batch is too small to feed every thread); each image is first copied, vectorised, into a
per-thread padded scratch (:mod:`schedules.kernels.scratch`); the row-tile loop sits outside the
output-channel loop (knob ``tile_outer``); a ``group x rows x width`` accumulator lives in a small
stack buffer that LLVM keeps in registers, updated by broadcast-FMA over contiguous columns; indices
and values are runtime buffers, so one build serves every mask of the same shapes and capacity.

The grad-input kernel is the same template over the transposed, tap-flipped structure, so no dense
weight is ever formed. At stride 2 it computes each of the four output parity classes from the
entries that feed it (no product with an inserted zero).
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import ir as T

from schedules.kernels.entries import Entries
from schedules.kernels.knobs import Knobs, resolve_gather
from schedules.kernels.scratch import Scratch
from schedules.threads import num_threads


def _declare(name: str, shape: tuple[int, ...], dtype: str) -> tirx.Buffer:
    return T.arg(name, T.buffer(shape, dtype, buffer_name=name))


def parallel_splits(batch: int, rows: int, threads: int) -> int:
    """Parts the output rows are split into so a small batch still feeds every thread.

    With at least 4 images per thread the batch alone is split (1 part); otherwise the rows are cut
    into the largest divisor of ``rows`` not above ``ceil(4 * threads / batch)`` parts, each of which
    pads its own copy of the image.
    """
    wanted = -(-4 * threads // batch)
    return max(d for d in range(1, min(rows, wanted) + 1) if rows % d == 0)


def tap_offsets(walk: Entries, buffers: dict[str, tirx.Buffer], scratch: Scratch) -> tirx.Buffer:
    """Emit a loop that tabulates each entry's scratch offsets (``channel * plane + tap offset``).

    Computed once per call (``count * taps`` integers), it spares the inner loops the index decoding
    they would otherwise redo for every image and tile.
    """
    offsets = T.alloc_buffer((max(walk.count, 1) * walk.taps,), "int32")
    with T.serial(0, walk.count) as e:
        for t in range(walk.taps):
            offset = walk.channel(buffers, e) * scratch.plane + scratch.tap_offset(walk.tap(buffers, e, t))
            T.buffer_store(offsets, offset, [e * walk.taps + t])
    return offsets


def parity_extents(size: int) -> tuple[int, int]:
    """Output rows (or columns) of even and of odd index in a size-``size`` output."""
    return (size + 1) // 2, size // 2


def gather_extent(out_height: int, out_width: int, parity: bool) -> tuple[int, int]:
    """Height and width the row and width tiles must divide (every parity class's, when split)."""
    if not parity:
        return out_height, out_width
    return math.gcd(*parity_extents(out_height)), math.gcd(*parity_extents(out_width))


def gather_conv(
    walk: Entries,
    src_shape: tuple[int, int, int, int],
    out_shape: tuple[int, int, int, int],
    scratch: Scratch,
    knobs: Knobs | None,
    name: str,
    parity: bool = False,
) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``name(src, *walk.params, out)``.

    Parameters
    ----------
    walk : Entries
        The format's walk for this direction.
    src_shape, out_shape : tuple of int
        NCHW shapes of the source (``x`` or ``dy``) and of the output (``y`` or ``dx``).
    scratch : Scratch
        Layout of the per-image padded copy of the source.
    knobs : Knobs, optional
        Schedule knobs; unset ones are chosen from the shape.
    name : str
        Global symbol of the function.
    parity : bool
        Stride-2 transposed conv by output parity: each of the 4 classes of output pixels
        ``(2a + ph, 2b + pw)`` is a dense sub-grid computed from the entries of its class only
        (``walk.class_range``, ``tail`` scratch).

    Returns
    -------
    tvm.tirx.PrimFunc
        With ``tir.is_scheduled`` set.
    """
    batch = src_shape[0]
    out_height, out_width = out_shape[2:]
    group, taps = walk.group, walk.taps
    k = resolve_gather(knobs or Knobs(), *gather_extent(out_height, out_width, parity), group)
    rows, width = k.rows, k.width
    splits = parallel_splits(batch, walk.rows, num_threads())
    rows_per_part = walk.rows // splits
    if parity:
        classes = [(ph, pw, parity_extents(out_height)[ph], parity_extents(out_width)[pw]) for ph in (0, 1) for pw in (0, 1)]
    else:
        classes = [(None, None, out_height, out_width)]
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"global_symbol": name, "tir.noalias": True, "tir.is_scheduled": True})
            src = _declare("src", src_shape, "float32")
            buffers = {spec.name: _declare(spec.name, spec.shape, spec.dtype) for spec in walk.params}
            out = _declare("out", out_shape, "float32")
            values = buffers["values"]
            offsets = tap_offsets(walk, buffers, scratch)
            with T.parallel(0, batch * splits) as job:
                n, part = job // splits, job % splits
                pad = T.alloc_buffer((scratch.size,), "float32")
                scratch.fill(src, n, pad, 0)
                for ph, pw, height, width_extent in classes:
                    outer = (height // rows, rows_per_part) if k.tile_outer else (rows_per_part, height // rows)
                    with T.serial(0, outer[0]) as a:
                        with T.serial(0, outer[1]) as b:
                            tile, row = (a, part * rows_per_part + b) if k.tile_outer else (b, part * rows_per_part + a)
                            with T.serial(0, width_extent // width) as wt:
                                acc = T.alloc_buffer((group * rows * width,), "float32")
                                with T.unroll(0, group * rows) as gr:
                                    with T.vectorized(0, width) as w:
                                        T.buffer_store(acc, tirx.const(0.0, "float32"), [gr * width + w])
                                begin, end = walk.row_range(buffers, row) if ph is None else walk.class_range(buffers, row, 2 * ph + pw)
                                with T.serial(begin, end) as e:
                                    base = tile * rows * scratch.row_stride + wt * width
                                    for t in range(taps):
                                        at = base + offsets[e * taps + t]
                                        for g in range(group):
                                            value = values[walk.value_slot(buffers, e, t, g)]
                                            with T.unroll(0, rows) as r:
                                                with T.vectorized(0, width) as w:
                                                    slot = (g * rows + r) * width + w
                                                    T.buffer_store(acc, acc[slot] + value * pad[at + r * scratch.row_stride + w], [slot])
                                with T.unroll(0, group) as g:
                                    with T.unroll(0, rows) as r:
                                        with T.vectorized(0, width) as w:
                                            h, x = tile * rows + r, wt * width + w
                                            if ph is not None:
                                                h, x = 2 * h + ph, 2 * x + pw
                                            T.buffer_store(out, acc[(g * rows + r) * width + w], [n, row * group + g, h, x])
    return builder.get()
