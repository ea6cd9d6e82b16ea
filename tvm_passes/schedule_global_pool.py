"""ScheduleGlobalPool: a default CPU schedule for sums over the innermost axes (a global average pool).

Where it runs: after ``LegalizeOps``/``FuseOps``/``FuseTIR`` and the tuning database, with the other
dense schedules (:class:`~tvm_passes.schedule_dense_ops.ScheduleDenseOps` runs it after the conv and
matmul schedules and before dlight's general reductions). A ResNet's ``adaptive_avg_pool2d(x, 1)``
imports as ``mean(x, axis=[2, 3])``: a reduction ``red[n, c] += x[n, c, h, w]`` and a divide.

What it does: the reduced axes, contiguous in memory, are fused and summed ``lanes`` at a time into
a vector of partial sums per output (``rfactor``), a few outputs side by side (unrolled, as many as
the accumulators allow) so that the additions do not wait on each other; the lanes are then summed
and the element-wise epilogue (the divide) applied per tile; the outer output loops run in parallel.

What it refuses (leaves unchanged): scheduled functions, reductions whose reduced axes are not the
input's innermost ones in order (BN statistics over ``N, H, W``: dlight's rule takes those), any
other reduction than a sum of one input, PrimFuncs with more than one reduction, and any function
where a schedule primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad  # what a buffer load is in TVM 0.27 (``tirx.BufferLoad`` builds one)

from devices.targets import TargetSpec

from .dense_schedule import (
    FuncBlocks,
    RegisterTile,
    largest_divisor,
    mark_scheduled,
    schedule_unscheduled,
    unroll_and_vectorize,
)


def _sums_innermost_axes(block: tirx.SBlock) -> bool:
    """``out[s...] = out[s...] + x[s..., r...]`` with the block's iterators in that order."""
    body = block.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return False
    accumulated, added = body.value.a, body.value.b
    if not isinstance(accumulated, TensorLoad) or not accumulated.source.same_as(body.buffer):
        return False
    if not isinstance(added, TensorLoad) or len(added.indices) != len(block.iter_vars):
        return False
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    spatial = kinds.count(tirx.IterVar.DataPar)
    if spatial == 0 or kinds != [tirx.IterVar.DataPar] * spatial + [tirx.IterVar.CommReduce] * (len(kinds) - spatial):
        return False
    return all(isinstance(i, tirx.Var) and i.same_as(iv.var) for i, iv in zip(added.indices, block.iter_vars))


def schedule_pool(func: tirx.PrimFunc, tile: RegisterTile) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it is not a sum over innermost axes.

    ``tile`` is the target's register budget; the contract is that of the ``schedule`` of
    :func:`~tvm_passes.dense_schedule.schedule_unscheduled`.
    """
    sch = s_tir.Schedule(func)
    blocks = FuncBlocks(sch)
    if len(blocks.reductions) != 1 or not _sums_innermost_axes(sch.get(blocks.reductions[0])):
        return None
    red = blocks.reductions[0]
    epilogue = blocks.epilogue([red])
    loops = sch.get_loops(red)
    spatial = len([iv for iv in sch.get(red).iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar])
    reduced = sch.fuse(*loops[spatial:])
    lanes = largest_divisor(int(sch.get(reduced).extent), tile.lanes)
    _, lane = sch.split(reduced, [None, lanes])
    partial = sch.rfactor(lane, spatial)  # partial sums [s..., lane]
    *outer, last, steps, lane = sch.get_loops(partial)
    side_by_side = largest_divisor(int(sch.get(last).extent), tile.accumulators // tile.vectors(lanes))
    group, member = sch.split(last, [None, side_by_side])
    sch.reorder(group, steps, member, lane)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    unroll_and_vectorize(sch, [member], lane)
    sch.decompose_reduction(partial, steps)
    sch.reverse_compute_at(red, group)
    for block in epilogue:
        sch.reverse_compute_at(block, group)
    return mark_scheduled(sch.mod["main"])


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleGlobalPool")
class ScheduleGlobalPool:
    """Schedule the unscheduled sums over innermost axes of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table whose lanes and registers size the tiles (default: this machine).
    """

    def __init__(self, target: str | TargetSpec = "host"):
        self.tile = RegisterTile.for_target(target)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        return schedule_unscheduled(mod, lambda func: schedule_pool(func, self.tile))
