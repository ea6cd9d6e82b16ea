"""What the dense schedule passes share: the register budget of a target, tile choice, application.

The dense schedules (:class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`,
:class:`~tvm_passes.schedule_dense_matmul.ScheduleDenseMatmul`) keep a block of outputs in vector
registers while the reduction runs. Its size comes from the target's row of the ``devices`` table:
float32 lanes per vector register, and the registers left for accumulators once a few are kept for
the operands. :func:`schedule_unscheduled` applies such a schedule to a module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec, get_target

#: Vector registers kept for the operands (a broadcast weight, input vectors) and not accumulated in.
OPERAND_REGISTERS = 4
#: Largest accumulator in bytes: above TVM's stack-allocation limit (``kMaxStackAlloca``) a buffer
#: becomes a workspace allocation, which LLVM does not keep in registers.
MAX_TILE_BYTES = 1024
#: The cost model of :func:`outer_product_tile` (Zen 3, Skylake and Cortex-A76 alike): FMAs and vector
#: loads issued per cycle, and FMA latency in cycles (an accumulator is updated once per reduction step).
FMAS_PER_CYCLE = 2
LOADS_PER_CYCLE = 2
FMA_LATENCY = 4
#: Bytes of a cache line (x86 and ARM alike).
CACHE_LINE_BYTES = 64


@dataclass(frozen=True)
class RegisterTile:
    """The accumulator budget of one target.

    Attributes
    ----------
    lanes : int
        float32 lanes of a vector register (AVX2: 8, NEON: 4).
    accumulators : int
        Vector registers an accumulator tile may take.
    """

    lanes: int
    accumulators: int

    @classmethod
    def for_target(cls, target: str | TargetSpec) -> "RegisterTile":
        """The budget of a target of the ``devices`` table (x86 AVX2: 8 lanes, 12 accumulators).

        Parameters
        ----------
        target : str or TargetSpec

        Returns
        -------
        RegisterTile
        """
        spec = get_target(target)
        lanes = spec.vector_bits // 32
        accumulators = min(spec.vector_registers - OPERAND_REGISTERS, MAX_TILE_BYTES // (4 * lanes))
        return cls(lanes=lanes, accumulators=accumulators)

    def vectors(self, width: int) -> int:
        """Vector registers a row of ``width`` floats takes."""
        return -(-width // self.lanes)


def divisors(value: int, limit: int) -> list[int]:
    """Divisors of ``value`` not above ``limit``, ascending."""
    return [d for d in range(1, min(value, limit) + 1) if value % d == 0]


def largest_divisor(value: int, limit: int) -> int:
    """The largest divisor of ``value`` not above ``limit`` (at least 1)."""
    return divisors(value, max(limit, 1))[-1]


def _lanes_per_cycle(lanes: int, fmas: int, loads: int) -> float:
    return lanes / max(fmas / FMAS_PER_CYCLE, loads / LOADS_PER_CYCLE, FMA_LATENCY)


def outer_product_tile(tile: RegisterTile, broadcast_extent: int, rows_extent: int,
                       vector_extent: int) -> tuple[int, int, int]:
    """The ``(broadcast, rows, width)`` tile of an outer-product update ``acc[b, r, w] += u[b] * v[r, w]``.

    Every reduction step loads ``broadcast`` scalars (broadcast to a vector) and ``rows`` vectors per
    vector of width, and issues ``broadcast * rows * vectors`` FMAs. The tile fits the accumulators,
    each extent divides its loop (a width below one vector is allowed), and among those the one with
    the most useful lanes per cycle wins, a step taking the longest of its FMAs, its loads and the FMA
    latency (:data:`FMAS_PER_CYCLE`, :data:`LOADS_PER_CYCLE`, :data:`FMA_LATENCY`). Ties go to rows
    that fill a cache line (16 floats in one line rather than four rows of 8 in four), then to more
    broadcasts, then to more rows: measured single-threaded on the stem and the 1x1 convs of
    ResNet-32 (AMD Zen 3), 4 x 1 x 16 ran 10-35% faster than 2 x 4 x 8 and than 2 x 1 x 32.

    Parameters
    ----------
    tile : RegisterTile
    broadcast_extent, rows_extent, vector_extent : int
        Extents of the three loops.

    Returns
    -------
    tuple of int
    """
    best, best_key = (1, 1, 1), None
    for width in divisors(vector_extent, tile.lanes * tile.accumulators):
        vectors = tile.vectors(width)
        for rows in divisors(rows_extent, tile.accumulators // vectors):
            for broadcast in divisors(broadcast_extent, tile.accumulators // (vectors * rows)):
                fmas, loads = broadcast * rows * vectors, broadcast + rows * vectors
                row_bytes = min(4 * width, CACHE_LINE_BYTES)
                key = (_lanes_per_cycle(broadcast * rows * width, fmas, loads), row_bytes, broadcast, rows, width)
                if best_key is None or key > best_key:
                    best, best_key = (broadcast, rows, width), key
    return best


def inner_product_tile(tile: RegisterTile, filters: int, channels: int, taps: int, width: int) -> tuple[int, int]:
    """The ``(filters, channels)`` tile of a weight gradient ``acc[f, c, t, w] += dy[f, w] * x[c, t + w]``.

    The reduction runs along ``width`` lanes (one accumulator vector per output and ``width`` floats);
    every step loads one vector per filter and per channel and tap, and issues one FMA per
    accumulator. Same fit and cost model as :func:`outer_product_tile`; ties go to more filters (the
    ``dy`` rows are aligned; measured on the 1x1 shortcuts of ResNet-32, 4 filters x 2 channels ran
    15% faster than 2 x 4).

    Parameters
    ----------
    tile : RegisterTile
    filters, channels : int
        Extents of the filter and channel loops (each tile extent divides its loop).
    taps : int
        Taps along a row, all in the tile.
    width : int
        Lanes of the partial sums.

    Returns
    -------
    tuple of int
    """
    vectors = tile.vectors(width)
    best, best_key = (1, 1), None
    for ci in divisors(channels, max(1, tile.accumulators // (vectors * taps))):
        for fi in divisors(filters, max(1, tile.accumulators // (vectors * taps * ci))):
            fmas, loads = fi * ci * taps * vectors, (fi + ci * taps) * vectors
            key = (_lanes_per_cycle(fi * ci * taps * width, fmas, loads), fi, ci)
            if best_key is None or key > best_key:
                best, best_key = (fi, ci), key
    return best


def block_name(sch: s_tir.Schedule, block) -> str:
    """The name of a block."""
    return sch.get(block).name_hint


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    """Whether a block has a reduction iterator."""
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def parallel_outer(sch: s_tir.Schedule, block, count: int = 2) -> None:
    """Fuse the ``count`` outer loops of a block and run them in parallel."""
    loops = sch.get_loops(block)
    if loops:
        sch.parallel(sch.fuse(*loops[: min(count, len(loops))]))


def write_back_at(sch: s_tir.Schedule, block, loop):
    """Accumulate ``block`` in a small buffer written back under ``loop``; return the write-back's innermost loop.

    The buffer (``cache_write``, global scope) is sized by the tile below ``loop`` and allocated
    there, inside any parallel loop: a few hundred bytes that LLVM keeps in registers. None when the
    write-back has no loop of its own (a one-element tile).
    """
    write_back = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(write_back, loop)
    loops = sch.get_loops(write_back)
    at = next(i for i, lp in enumerate(loops) if sch.get_sref(lp).same_as(sch.get_sref(loop)))
    return loops[-1] if len(loops) > at + 1 else None


def unroll_and_vectorize(sch: s_tir.Schedule, unrolled: list, vectorized) -> None:
    """Unroll the ``unrolled`` loops and vectorise ``vectorized``, skipping absent and unit loops."""
    for loop in unrolled:
        if loop is not None and int(sch.get(loop).extent) > 1:
            sch.unroll(loop)
    if vectorized is not None and int(sch.get(vectorized).extent) > 1:
        sch.vectorize(vectorized)


class FuncBlocks:
    """The blocks of the PrimFunc of a schedule, by role (reductions, outputs, element-wise rest).

    Parameters
    ----------
    sch : tvm.s_tir.Schedule
    """

    def __init__(self, sch: s_tir.Schedule):
        self.sch = sch
        self.root = sch.get_sblock("root")
        self.reductions = [b for b in self.blocks if is_reduction(sch, b)]
        self.outputs = {block_name(sch, b) for b in sch.get_output_blocks(self.root)}

    @property
    def blocks(self) -> list:
        """The blocks under the root now (inlining removes some)."""
        return self.sch.get_child_blocks(self.root)

    def named(self, *prefixes: str) -> list:
        """The blocks whose name starts with one of ``prefixes``."""
        return [b for b in self.blocks if block_name(self.sch, b).startswith(prefixes)]

    def epilogue(self, keep: list, keep_prefixes: tuple[str, ...] = ()) -> list:
        """Inline every block neither kept (by block or name prefix) nor an output; return the output ones."""
        kept = {block_name(self.sch, b) for b in keep}
        outputs = []
        for block in self.blocks:
            name = block_name(self.sch, block)
            if name in kept or name.startswith(keep_prefixes):
                continue
            if name in self.outputs:
                outputs.append(block)
            else:
                self.sch.compute_inline(block)
        return outputs

    def try_reverse_inline(self, blocks: list) -> list:
        """Inline each block into its producer where TVM allows it (a write-back); return the others."""
        left = []
        for block in blocks:
            try:
                self.sch.reverse_compute_inline(block)
            except s_tir.ScheduleError:
                left.append(block)
        return left


#: The marks of a scheduled PrimFunc: ``tirx.is_scheduled`` is TVM 0.27's (dlight, MetaSchedule's task
#: extraction), ``tir.is_scheduled`` the older name the rest of this project checks.
SCHEDULED_MARKS = ("tirx.is_scheduled", "tir.is_scheduled")


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """Whether a PrimFunc carries either mark of :data:`SCHEDULED_MARKS`."""
    return func.attrs is not None and any(mark in func.attrs for mark in SCHEDULED_MARKS)


def mark_scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with both marks of :data:`SCHEDULED_MARKS`."""
    return func.with_attrs({mark: True for mark in SCHEDULED_MARKS})


def schedule_unscheduled(mod: tvm.IRModule, schedule: Callable[[tirx.PrimFunc], tirx.PrimFunc | None]) -> tvm.IRModule:
    """``mod`` with each PrimFunc not :func:`is_scheduled` replaced by ``schedule(func)``.

    Parameters
    ----------
    mod : tvm.IRModule
    schedule : callable
        Takes a legalized (possibly fused) PrimFunc and returns it scheduled and marked
        (:func:`mark_scheduled`), or None for a function it does not take. A function on which one
        of its schedule primitives fails (``tvm.s_tir.ScheduleError``, a ``RuntimeError``, or a
        ``ValueError`` from a failed check inside one) is left unchanged too.

    Returns
    -------
    tvm.IRModule
    """
    out = mod.clone()
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        try:
            scheduled = schedule(func)
        except (RuntimeError, ValueError):
            scheduled = None
        if scheduled is not None:
            out[gvar] = scheduled
    return out
