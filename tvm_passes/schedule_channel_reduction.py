"""ScheduleChannelReduction: a default CPU schedule for per-channel sums over ``N, H, W`` (batch-norm statistics).

Where it runs: phase 8 of :func:`tvm_passes.training_pipeline.build_training_step`, after ``FuseTIR``
and before :class:`~tvm_passes.schedule_dense_ops.ScheduleDenseOps` (whose dlight reduction rule would
otherwise take these functions and run them ~10x slower). The training step's batch norms
(:mod:`tvm_passes.train_batch_norm`) reduce ``[N, C, H, W]`` tensors to one float64 value per channel,
forward (mean, variance) and backward (the ``collapse_sum`` of ``d beta``, ``d gamma``, ``d mean``),
each fused with the element-wise producers of its operand: in a ResNet step they were the largest
share of the time until scheduled.

What it does: the element-wise producers are inlined into the reduction; the reduced ``H, W`` loops
(contiguous in memory) are fused and split by the vector width into lanes of partial sums
(``rfactor``), accumulated over ``N`` and the rest of ``H*W``, then summed; the channel loop runs in
parallel and the lanes are vectorised. Element-wise blocks after the reduction (a divide) run per
channel.

What it refuses (leaves unchanged): scheduled functions, a PrimFunc with another reduction than one
block reducing three axes to outputs of which exactly one axis is longer than 1 (so no conv, matmul
or pool), and any function where a schedule primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec

from .dense_schedule import FuncBlocks, RegisterTile, largest_divisor, mark_scheduled, schedule_unscheduled


def _is_channel_reduction(sch: s_tir.Schedule, block) -> bool:
    iters = sch.get(block).iter_vars
    reduced = [iv for iv in iters if int(iv.iter_type) == tirx.IterVar.CommReduce]
    spatial = [iv for iv in iters if int(iv.iter_type) == tirx.IterVar.DataPar]
    long_spatial = [iv for iv in spatial if int(iv.dom.extent) > 1]
    return len(reduced) == 3 and len(long_spatial) == 1 and len(spatial) + len(reduced) == len(iters)


def schedule_channel_reduction(func: tirx.PrimFunc, tile: RegisterTile) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it is not a per-channel sum (see the module docstring)."""
    sch = s_tir.Schedule(func)
    blocks = FuncBlocks(sch)
    if len(blocks.reductions) != 1 or not _is_channel_reduction(sch, blocks.reductions[0]):
        return None
    red = blocks.reductions[0]
    epilogue = blocks.epilogue([red])
    loops = sch.get_loops(red)
    kinds = [int(iv.iter_type) for iv in sch.get(red).iter_vars]
    spatial = [lp for lp, kind in zip(loops, kinds) if kind == tirx.IterVar.DataPar]
    batch, *image = [lp for lp, kind in zip(loops, kinds) if kind == tirx.IterVar.CommReduce]
    pixels = sch.fuse(*image)
    lanes = largest_divisor(int(sch.get(pixels).extent), tile.lanes)
    steps, lane = sch.split(pixels, [None, lanes])
    sch.reorder(*spatial, batch, steps, lane)
    partial = sch.rfactor(lane, len(spatial))  # lane partial sums per channel
    outer = sch.get_loops(partial)[: len(spatial)]
    channel = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(channel)
    *_, batch, steps, lane = sch.get_loops(partial)
    sch.reorder(batch, steps, lane)
    if lanes > 1:
        sch.vectorize(lane)
    sch.decompose_reduction(partial, batch)
    sch.reverse_compute_at(red, channel)
    for block in epilogue:
        sch.reverse_compute_at(block, channel)
    return mark_scheduled(sch.mod["main"])


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleChannelReduction")
class ScheduleChannelReduction:
    """Schedule the unscheduled per-channel sums of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table whose vector width sizes the lanes.
    """

    def __init__(self, target: str | TargetSpec = "host"):
        self.tile = RegisterTile.for_target(target)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        return schedule_unscheduled(mod, lambda func: schedule_channel_reduction(func, self.tile))
