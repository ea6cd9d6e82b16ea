"""ScheduleElementwise: a default CPU schedule for the fused element-wise kernels nothing else scheduled.

Where it runs: last of phase 8 of :func:`tvm_passes.training_pipeline.build_training_step`, after
:class:`~tvm_passes.schedule_dense_ops.ScheduleDenseOps` (its conv epilogues and dlight's reductions
are scheduled by then). A training step's batch-norm application, ReLUs, residual adds, their
gradients and the SGD update are fused element-wise kernels; unscheduled, TVM runs each as one
sequential loop nest.

What it does, for a PrimFunc of element-wise or injective blocks only: the intermediate blocks are
inlined into the outputs; each output block's two outer loops are fused and run in parallel, and its
innermost loop is split by the vector width and vectorised (when the width divides it).

What it refuses (leaves unchanged): scheduled functions, PrimFuncs with a reduction block, blocks that
cannot be inlined (then the function as a whole), and any function where a schedule primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec

from .dense_schedule import FuncBlocks, RegisterTile, mark_scheduled, schedule_unscheduled

#: Outputs smaller than this stay sequential (a per-channel vector: a thread would cost more).
_PARALLEL_MIN = 4096


def schedule_elementwise(func: tirx.PrimFunc, tile: RegisterTile) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it holds a reduction (see the module docstring)."""
    sch = s_tir.Schedule(func)
    blocks = FuncBlocks(sch)
    if blocks.reductions or not blocks.blocks:
        return None
    for block in blocks.epilogue([]):
        loops = sch.get_loops(block)
        if not loops:
            continue
        extents = [int(sch.get(lp).extent) for lp in loops]
        inner = loops[-1]
        if extents[-1] % tile.lanes == 0 and extents[-1] > tile.lanes:
            _, inner = sch.split(inner, [None, tile.lanes])
            loops = sch.get_loops(block)
        if extents[-1] % tile.lanes == 0 or extents[-1] == tile.lanes:
            sch.vectorize(inner)
        total = 1
        for extent in extents:
            total *= extent
        outer = loops[: min(2, len(loops) - 1)]
        if total >= _PARALLEL_MIN and outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    return mark_scheduled(sch.mod["main"])


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleElementwise")
class ScheduleElementwise:
    """Schedule the unscheduled element-wise PrimFuncs of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table whose vector width sizes the vectorised loop.
    """

    def __init__(self, target: str | TargetSpec = "host"):
        self.tile = RegisterTile.for_target(target)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        return schedule_unscheduled(mod, lambda func: schedule_elementwise(func, self.tile))
