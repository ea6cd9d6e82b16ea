"""ScheduleDenseMatmul: a default CPU schedule for the legalized 2-D matmuls (the classifier, 3 ways).

Where it runs: after ``LegalizeOps``/``FuseOps``/``FuseTIR`` and after ``MetaScheduleApplyDatabase``,
next to :class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`: it only touches PrimFuncs that
are still unscheduled (neither mark of :data:`~tvm_passes.dense_schedule.SCHEDULED_MARKS`). A
classifier ``linear`` imports as ``matmul(x, permute_dims(W))``; its gradients are ``matmul(dy, W)``
and ``matmul(permute_dims(dy), x)``: all three are TOPI ``matmul`` blocks ``C[i, j] += A[i, k] *
B[k, j]``, except that the forward is ``NT_matmul`` (``C[i, j] += A[i, k] * B[j, k]``) when
``FuseTransposeMatmul`` ran before ``LegalizeOps`` (one call instead of a transpose and a matmul).

What it does: a tile of ``rows x columns`` of ``C`` is accumulated in vector registers (``A``
broadcast, ``B`` loaded along the columns, which are vectorised; sizes from
:func:`~tvm_passes.dense_schedule.outer_product_tile`), the reduction outside the tile; element-wise
epilogues are inlined into the tile's write-back where TVM allows it. ``NT_matmul`` (both operands
contiguous along ``k``) accumulates instead a tile of partial sums along ``k``, a lane per ``k``
(:func:`~tvm_passes.dense_schedule.inner_product_tile`), summed per tile, then its epilogue: the
classifier's 10 columns fill no vector, its 128 ``k`` do (measured 3.5 us against 15 us). The row
tiles run in parallel only when the product has at least :data:`PARALLEL_MIN_MACS` multiply-adds:
below that, waking the thread pool costs more than it saves (a ResNet classifier has 82k).

What it refuses (leaves unchanged): scheduled functions, batched or transposed
matmul blocks (anything but 2 spatial and 1 reduction loop), PrimFuncs with any other reduction
block, and any function where a schedule primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec

from .dense_schedule import (
    FuncBlocks,
    RegisterTile,
    block_name,
    inner_product_tile,
    largest_divisor,
    mark_scheduled,
    outer_product_tile,
    parallel_outer,
    schedule_unscheduled,
    unroll_and_vectorize,
    write_back_at,
)

#: Multiply-adds from which the row tiles run in parallel.
PARALLEL_MIN_MACS = 1 << 20


def schedule_matmul(func: tirx.PrimFunc, tile: RegisterTile) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it is not a 2-D matmul this schedule takes.

    ``tile`` is the target's register budget; the contract is that of the ``schedule`` of
    :func:`~tvm_passes.dense_schedule.schedule_unscheduled`.
    """
    sch = s_tir.Schedule(func)
    blocks = FuncBlocks(sch)
    if len(blocks.reductions) != 1 or not block_name(sch, blocks.reductions[0]).startswith(("matmul", "NT_matmul")):
        return None
    matmul = blocks.reductions[0]
    kinds = [int(iv.iter_type) for iv in sch.get(matmul).iter_vars]
    loops = sch.get_loops(matmul)
    if kinds != [tirx.IterVar.DataPar, tirx.IterVar.DataPar, tirx.IterVar.CommReduce] or len(loops) != 3:
        return None
    epilogue = blocks.epilogue([matmul])
    if block_name(sch, matmul).startswith("NT_matmul"):
        _schedule_inner_products(sch, matmul, epilogue, tile)
        return mark_scheduled(sch.mod["main"])
    i, j, k = loops
    rows, columns = int(sch.get(i).extent), int(sch.get(j).extent)
    ri, _, cj = outer_product_tile(tile, rows, 1, columns)
    io, ii = sch.split(i, [None, ri])
    jo, ji = sch.split(j, [None, cj])
    sch.reorder(io, jo, k, ii, ji)
    write_back = write_back_at(sch, matmul, jo)
    left = blocks.try_reverse_inline(epilogue)
    if rows * columns * int(sch.get(k).extent) >= PARALLEL_MIN_MACS:
        sch.parallel(io)
        for block in left:
            parallel_outer(sch, block, 1)
    unroll_and_vectorize(sch, [ii], ji)
    sch.decompose_reduction(matmul, k)
    unroll_and_vectorize(sch, [], write_back)
    return mark_scheduled(sch.mod["main"])


def _schedule_inner_products(sch: s_tir.Schedule, matmul, epilogue: list, tile: RegisterTile) -> None:
    """``C[i, j] += A[i, k] * B[j, k]``: partial sums along ``k`` in lanes, a ``rows x columns`` tile of them."""
    i, j, k = sch.get_loops(matmul)
    macs = int(sch.get(i).extent) * int(sch.get(j).extent) * int(sch.get(k).extent)
    _, lane = sch.split(k, [None, largest_divisor(int(sch.get(k).extent), tile.lanes)])
    partial = sch.rfactor(lane, 2)  # partial sums [i, j, lane]
    i, j, steps, lane = sch.get_loops(partial)
    ri, cj = inner_product_tile(tile, int(sch.get(i).extent), int(sch.get(j).extent), 1, int(sch.get(lane).extent))
    io, ii = sch.split(i, [None, ri])
    jo, ji = sch.split(j, [None, cj])
    sch.reorder(io, jo, steps, ii, ji, lane)
    if macs >= PARALLEL_MIN_MACS:
        sch.parallel(io)
    unroll_and_vectorize(sch, [ii, ji], lane)
    sch.decompose_reduction(partial, steps)
    sch.reverse_compute_at(matmul, jo)  # the lanes summed per tile
    for block in epilogue:
        sch.reverse_compute_at(block, jo)


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleDenseMatmul")
class ScheduleDenseMatmul:
    """Schedule the unscheduled 2-D matmuls of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table whose registers size the tiles (default: this machine).
    """

    def __init__(self, target: str | TargetSpec = "host"):
        self.tile = RegisterTile.for_target(target)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        return schedule_unscheduled(mod, lambda func: schedule_matmul(func, self.tile))
