"""ScheduleDenseMatmul: a default CPU schedule for the legalized 2-D matmuls (the classifier, 3 ways).

Where it runs: after ``LegalizeOps``/``FuseOps``/``FuseTIR`` and after ``MetaScheduleApplyDatabase``,
next to :class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`: it only touches PrimFuncs that
are still unscheduled (no ``tir.is_scheduled``). A classifier ``linear`` imports as
``matmul(x, permute_dims(W))``; its gradients are ``matmul(dy, W)`` and ``matmul(permute_dims(dy),
x)``: all three are TOPI ``matmul`` blocks ``C[i, j] += A[i, k] * B[k, j]``.

What it does: a tile of ``rows x columns`` of ``C`` is accumulated in vector registers (``A``
broadcast, ``B`` loaded along the columns, which are vectorised; sizes from
:func:`~tvm_passes.register_tile.outer_product_tile`), the reduction outside the tile; element-wise
epilogues are inlined into the tile's write-back where TVM allows it. The row tiles run in parallel
only when the product has at least :data:`PARALLEL_MIN_MACS` multiply-adds: below that, waking the
thread pool costs more than it saves (a ResNet classifier has 82k).

What it refuses (leaves unchanged): functions with ``tir.is_scheduled``, batched or transposed
matmul blocks (anything but 2 spatial and 1 reduction loop), PrimFuncs with any other reduction
block, and any function where a schedule primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec

from .register_tile import RegisterTile, outer_product_tile

#: Multiply-adds from which the row tiles run in parallel.
PARALLEL_MIN_MACS = 1 << 20


def schedule_matmul(func: tirx.PrimFunc, tile: RegisterTile) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it is not a 2-D matmul this schedule takes.

    Parameters
    ----------
    func : tvm.tirx.PrimFunc
        A legalized (and possibly fused) PrimFunc.
    tile : RegisterTile
        The target's accumulator budget.

    Returns
    -------
    tvm.tirx.PrimFunc or None
        With ``tir.is_scheduled`` set.

    Raises
    ------
    RuntimeError or ValueError
        When a schedule primitive refuses the function.
    """
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    reductions = [b for b in blocks if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1 or not sch.get(reductions[0]).name_hint.startswith("matmul"):
        return None
    matmul = reductions[0]
    kinds = [int(iv.iter_type) for iv in sch.get(matmul).iter_vars]
    loops = sch.get_loops(matmul)
    if kinds != [tirx.IterVar.DataPar, tirx.IterVar.DataPar, tirx.IterVar.CommReduce] or len(loops) != 3:
        return None
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    epilogue = []
    for block in blocks:
        if block == matmul:
            continue
        if sch.get(block).name_hint in outputs:
            epilogue.append(block)
        else:
            sch.compute_inline(block)
    i, j, k = loops
    rows, columns = int(sch.get(i).extent), int(sch.get(j).extent)
    ri, _, cj = outer_product_tile(tile, rows, 1, columns)
    io, ii = sch.split(i, [None, ri])
    jo, ji = sch.split(j, [None, cj])
    sch.reorder(io, jo, k, ii, ji)
    acc = sch.cache_write(matmul, 0, "global")
    sch.reverse_compute_at(acc, jo)
    left = []
    for block in epilogue:
        try:
            sch.reverse_compute_inline(block)
        except s_tir.ScheduleError:
            left.append(block)
    sch.unroll(ii)
    sch.vectorize(ji)
    sch.decompose_reduction(matmul, k)
    sch.vectorize(sch.get_loops(acc)[-1])
    if rows * columns * int(sch.get(k).extent) >= PARALLEL_MIN_MACS:
        sch.parallel(io)
        for block in left:
            sch.parallel(sch.get_loops(block)[0])
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleDenseMatmul")
class ScheduleDenseMatmul:
    """Schedule the unscheduled 2-D matmuls of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table whose registers size the tiles (default: this machine).
    """

    def __init__(self, target: str | TargetSpec = "x86"):
        self.tile = RegisterTile.for_target(target)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        out = mod.clone()
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and "tir.is_scheduled" in func.attrs):
                continue
            try:
                scheduled = schedule_matmul(func, self.tile)
            except (RuntimeError, ValueError):  # a primitive refused it (ScheduleError, or a failed check)
                scheduled = None
            if scheduled is not None:
                out[gvar] = scheduled
        return out
