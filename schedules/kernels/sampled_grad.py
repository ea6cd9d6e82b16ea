"""Sampled correlation: the grad-weight kernel of the irregular, block and pattern schemes.

``dvalues[slot] = sum over n, ho, wo of dy[n, o, ho, wo] * x_pad[n, i, s*ho + kh, s*wo + kw]`` only at
the format's kept positions ``(o, i, kh, kw)``: no dense weight gradient ever exists, which is what
makes MEST's training memory-economic.

Schedule: the batch is split into ``chunks`` parallel slices; each slice copies its images ``images``
at a time into a per-thread padded scratch (the forward kernel's layout) and, for every entry, accumulates
``rows x lanes`` independent vector accumulators of products over those images' output planes (``unroll`` entries of a row at a time
share each ``dy`` load), then adds their horizontal sum to the slice's partial gradient. The
partials are summed at the end; slots that belong to no row (capacity padding) come out as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import ir as T

from schedules.kernels.entries import Entries, Expr
from schedules.kernels.gather_conv import _declare, tap_offsets
from schedules.kernels.knobs import Knobs, resolve_grad_weight
from schedules.kernels.scratch import Scratch
from schedules.threads import num_threads


def _tree_sum(terms: list[Expr]) -> Expr:
    """Pairwise sum (a short dependency chain, unlike adding lanes one by one into memory)."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


@dataclass(frozen=True)
class _Plane:
    """Emits the correlation of a few entries of one row over a block of images."""

    walk: Entries
    buffers: dict
    offsets: tirx.Buffer
    scratch: Scratch
    dy: tirx.Buffer
    pad: tirx.Buffer
    partial: tirx.Buffer
    partial_base: Expr
    first_image: Expr
    row: Expr
    knobs: Knobs

    def emit(self, es: list[Expr]) -> None:
        """Accumulate ``dL/dw`` of entries ``es`` (which share the row's ``dy`` loads) into ``partial``."""
        walk, scratch, k = self.walk, self.scratch, self.knobs
        group, taps, rows, lanes = walk.group, walk.taps, k.rows, k.lanes
        out_height, out_width = self.dy.shape[2], self.dy.shape[3]
        streams = len(es) * group * taps
        zero = tirx.const(0.0, "float32")
        acc = T.alloc_buffer((streams * rows * lanes,), "float32")
        with T.unroll(0, streams * rows) as sr:
            with T.vectorized(0, lanes) as w:
                T.buffer_store(acc, zero, [sr * lanes + w])
        with T.serial(0, k.images) as i:
            with T.serial(0, out_height // rows) as ht:
                with T.serial(0, out_width // lanes) as wt:
                    for u, e in enumerate(es):
                        for t in range(taps):
                            at = i * scratch.size + self.offsets[e * taps + t] + ht * rows * scratch.row_stride + wt * lanes
                            for g in range(group):
                                with T.unroll(0, rows) as r:
                                    with T.vectorized(0, lanes) as w:
                                        slot = (((u * group + g) * taps + t) * rows + r) * lanes + w
                                        grad = self.dy[self.first_image + i, self.row * group + g, ht * rows + r, wt * lanes + w]
                                        T.buffer_store(acc, acc[slot] + grad * self.pad[at + r * scratch.row_stride + w], [slot])
        for u, e in enumerate(es):
            for t in range(taps):
                for g in range(group):
                    target = self.partial_base + walk.value_slot(self.buffers, e, t, g)
                    first = ((u * group + g) * taps + t) * rows * lanes
                    lane_sum = _tree_sum([acc[first + j] for j in range(rows * lanes)])
                    T.buffer_store(self.partial, self.partial[target] + lane_sum, [target])


def sampled_grad(
    walk: Entries,
    x_shape: tuple[int, int, int, int],
    y_shape: tuple[int, int, int, int],
    capacity: int,
    scratch: Scratch,
    knobs: Knobs | None,
    name: str,
) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``name(x, dy, *walk.params, dvalues)``.

    Parameters
    ----------
    walk : Entries
        The format's forward walk (its params exclude the values).
    x_shape, y_shape : tuple of int
        NCHW shapes of the forward input and output.
    capacity : int
        Value slots of the format (length of ``dvalues``).
    scratch : Scratch
        Layout of the per-image padded copy of ``x`` (the forward kernel's).
    knobs : Knobs, optional
        Schedule knobs; unset ones are chosen from the shape.
    name : str
        Global symbol of the function.

    Returns
    -------
    tvm.tirx.PrimFunc
        With ``tir.is_scheduled`` set.
    """
    batch = x_shape[0]
    out_height, out_width = y_shape[2:]
    group, taps = walk.group, walk.taps
    k = resolve_grad_weight(knobs or Knobs(), out_height, out_width, batch, group * taps, num_threads())
    chunks, images, unroll = k.chunks, k.images, k.unroll
    per_chunk = batch // chunks
    zero = tirx.const(0.0, "float32")
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"global_symbol": name, "tir.noalias": True, "tir.is_scheduled": True})
            x = _declare("x", x_shape, "float32")
            dy = _declare("dy", y_shape, "float32")
            buffers = {spec.name: _declare(spec.name, spec.shape, spec.dtype) for spec in walk.params}
            dvalues = _declare("dvalues", (capacity,), "float32")
            partial = T.alloc_buffer((chunks * capacity,), "float32")
            offsets = tap_offsets(walk, buffers, scratch)
            with T.parallel(0, chunks) as p:
                with T.serial(0, capacity) as s:
                    T.buffer_store(partial, zero, [p * capacity + s])
                pad = T.alloc_buffer((images * scratch.size,), "float32")
                with T.serial(0, per_chunk // images) as block:
                    first_image = p * per_chunk + block * images
                    for i in range(images):
                        scratch.fill(x, first_image + i, pad, i * scratch.size)
                    with T.serial(0, walk.rows) as row:
                        begin, end = walk.row_range(buffers, row)
                        plane = _Plane(walk, buffers, offsets, scratch, dy, pad, partial, p * capacity, first_image, row, k)
                        if unroll > 1:
                            blocks = (end - begin) // unroll
                            with T.serial(0, blocks) as j:
                                plane.emit([begin + j * unroll + u for u in range(unroll)])
                            with T.serial(begin + blocks * unroll, end) as e:
                                plane.emit([e])
                        else:
                            with T.serial(begin, end) as e:
                                plane.emit([e])
            with T.serial(0, capacity) as s:
                total = partial[s]
                for c in range(1, chunks):
                    total = total + partial[c * capacity + s]
                T.buffer_store(dvalues, total, [s])
    return builder.get()
