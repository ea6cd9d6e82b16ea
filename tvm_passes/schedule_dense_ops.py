"""ScheduleDenseOps: every default CPU schedule of the dense operators of a training step, in order.

Where it runs: after ``LegalizeOps``/``AnnotateTIROpPattern``/``FuseOps``/``FuseTIR`` and after the
tuning database is applied (``MetaScheduleApplyDatabase``), before ``tvm.compile``; with
:class:`~tvm_passes.legalize_dense_conv.LegalizeDenseConv` run before ``LegalizeOps``. A compiled
training step's dense part is then::

    FuseTransposeMatmul()          # Relax's: the classifier's x @ W^T as one NT_matmul
    LegalizeDenseConv()            # before LegalizeOps (after Gradient and the sparse lowering)
    LegalizeOps(), AnnotateTIROpPattern(), FuseOps(), FuseTIR()
    <apply the tuning database>    # its records win: what it schedules is skipped below
    ScheduleDenseOps(target)       # this pass

What it does: :class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv` (the convs, three
directions), :class:`~tvm_passes.schedule_dense_matmul.ScheduleDenseMatmul` (the classifier's
matmuls), :class:`~tvm_passes.schedule_global_pool.ScheduleGlobalPool` (the global average pool),
then dlight's CPU rules (``GEMV``, ``Reduction``) for what is left (BN statistics, the loss) under
the target.

What it refuses: each pass its own (scheduled functions, shapes it does not take); it never
reschedules a function.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight

from devices.targets import TargetSpec, get_target, tvm_target

from .schedule_dense_conv import ScheduleDenseConv
from .schedule_dense_matmul import ScheduleDenseMatmul
from .schedule_global_pool import ScheduleGlobalPool


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleDenseOps")
class ScheduleDenseOps:
    """Schedule the dense operators of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table (default: this machine).
    threads : int, optional
        Threads the conv schedules split their parallel loops for (default: the kernels' count).
    """

    def __init__(self, target: str | TargetSpec = "host", threads: int | None = None):
        self.spec = get_target(target)
        self.threads = threads

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        for schedule in (ScheduleDenseConv(self.spec, self.threads), ScheduleDenseMatmul(self.spec),
                         ScheduleGlobalPool(self.spec)):
            mod = schedule(mod)
        with tvm_target(self.spec):
            return dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())(mod)
