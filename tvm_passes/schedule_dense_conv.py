"""ScheduleDenseConv: a default CPU schedule for the dense convolutions the tuning database lacks.

Where it runs: after ``LegalizeOps``/``FuseOps``/``FuseTIR`` and after ``MetaScheduleApplyDatabase``
(phase 6 of the pipeline): it only touches PrimFuncs that are still unscheduled (no
``tir.is_scheduled``), so a tuned record always wins. In a training step, run
:class:`~tvm_passes.legalize_dense_conv.LegalizeDenseConv` before ``LegalizeOps`` so that the
grad-input and grad-weight convs are in the forms taken here.

What it schedules, each possibly fused with element-wise epilogues (inlined into the write-back of
the result where TVM allows it, else run as parallel loops of their own):

- **direct convs**: TOPI's ``conv2d_nchw``, and the forward and grad-input convs of
  :mod:`tvm_passes.dense_conv_te`. A tile of ``channels x rows x columns`` outputs is accumulated in
  vector registers (sizes from :func:`~tvm_passes.register_tile.outer_product_tile` and the target's
  :class:`~tvm_passes.register_tile.RegisterTile`; columns vectorised, the rest unrolled), the
  reduction loops outside the tile; in parallel over the images, each padding its own input into a
  per-thread copy first (over images and channel tiles, with one padding pass beforehand, when the
  batch is smaller than four images a thread). The grad-input's residue classes are interleaved
  into the output image by image.
- **the grad-weight conv** of :mod:`tvm_passes.dense_conv_te`: the batch is split into one part
  per thread; each part pads its images one at a time and accumulates ``filters x channels x taps``
  partial sums, vectorised along the output columns (a lane per column), into a per-part buffer;
  the parts and the lanes are then summed.

What it refuses (leaves unchanged): functions with ``tir.is_scheduled``, grouped or NHWC convs (no
block of these names), PrimFuncs with any other reduction block, and any function where a schedule
primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec
from schedules.threads import num_threads

from . import dense_conv_te
from .register_tile import RegisterTile, inner_product_tile, largest_divisor, outer_product_tile

#: Reduction blocks of the direct convs: TOPI's forward, our forward, our grad-input classes.
_DIRECT = ("conv2d_nchw", dense_conv_te.FORWARD, dense_conv_te.GRAD_INPUT)
#: Padded copies the direct and grad-weight convs read (TOPI's and ours).
_PADS = ("pad_temp", dense_conv_te.PHASE_PAD)
_block_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")
#: Images per thread below which the direct conv also splits the channels over the threads.
_IMAGES_PER_THREAD = 4


def _name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _parallel_outer(sch: s_tir.Schedule, block, count: int = 2) -> None:
    loops = sch.get_loops(block)
    if loops:
        sch.parallel(sch.fuse(*loops[: min(count, len(loops))]))


def _loops_by_iter(sch: s_tir.Schedule, block) -> tuple[list, list]:
    """The loop binding each spatial and each reduction iterator of ``block``, in iterator order.

    None for an iterator bound to no loop of its own (a unit extent, whose loop ``compute_at``
    drops); raises when a binding is anything but a loop variable or a constant, or when the loops
    are not nested in iterator order.
    """
    loops = sch.get_loops(block)
    bound = []
    spatial, reduce = [], []
    for iv, value in zip(sch.get(block).iter_vars, _block_realize(sch, block).iter_values):
        loop = None
        if isinstance(value, tirx.Var):
            loop = next((lp for lp in loops if sch.get(lp).loop_var.same_as(value)), None)
            if loop is None:
                raise s_tir.ScheduleError("iterator bound to a variable that is no loop of the block")
            bound.append(loop)
        elif not isinstance(value, tirx.IntImm):
            raise s_tir.ScheduleError("iterator bound to a compound expression")
        (reduce if int(iv.iter_type) == tirx.IterVar.CommReduce else spatial).append(loop)
    if [lp for lp in loops if any(lp.same_as(b) for b in bound)] != bound:
        raise s_tir.ScheduleError("loops not nested in iterator order")
    return spatial, reduce


def _split(sch: s_tir.Schedule, loop, inner: int) -> tuple:
    if loop is None:
        return None, None
    return tuple(sch.split(loop, [None, inner]))


def _innermost(*loops):
    return next(lp for lp in loops if lp is not None)


class _Func:
    """The blocks of one PrimFunc by role."""

    def __init__(self, sch: s_tir.Schedule):
        self.sch = sch
        self.root = sch.get_sblock("root")
        self.blocks = sch.get_child_blocks(self.root)
        self.reductions = [b for b in self.blocks if _is_reduction(sch, b)]
        self.outputs = {_name(sch, b) for b in sch.get_output_blocks(self.root)}

    def named(self, *prefixes: str) -> list:
        return [b for b in self.blocks if _name(self.sch, b).startswith(prefixes)]

    def epilogue(self, keep: list) -> list:
        """Inline the element-wise blocks that are neither kept nor outputs; return the output ones."""
        kept = {_name(self.sch, b) for b in keep}
        outputs = []
        for block in self.blocks:
            name = _name(self.sch, block)
            if name in kept or name.startswith(_PADS):
                continue
            if name in self.outputs:
                outputs.append(block)
            else:
                self.sch.compute_inline(block)
        return outputs

    def try_reverse_inline(self, blocks: list) -> list:
        """Inline each block into its producer's write-back where TVM allows it; return the others."""
        left = []
        for block in blocks:
            try:
                self.sch.reverse_compute_inline(block)
            except s_tir.ScheduleError:
                left.append(block)
        return left


def _schedule_direct(func: _Func, conv, tile: RegisterTile, threads: int) -> None:
    """Register-tiled direct conv: spatial ``n, channel, *classes, rows, columns``; reductions inside."""
    sch = func.sch
    pads = func.named(*_PADS)
    interleave = func.named(dense_conv_te.GRAD_INPUT_INTERLEAVE)
    taps = func.named(dense_conv_te.GRAD_INPUT_TAPS)
    outputs = func.try_reverse_inline([b for b in func.epilogue([conv, *interleave, *taps]) if b not in interleave])
    per_image = _extent(sch, sch.get_loops(conv)[0]) >= _IMAGES_PER_THREAD * threads
    if per_image and interleave:  # the classes of an image, then its interleave, under one image loop
        sch.compute_at(conv, sch.get_loops(interleave[0])[0])
    spatial, reduce = _loops_by_iter(sch, conv)
    if len(spatial) < 4 or spatial[0] is None:
        raise s_tir.ScheduleError("not a direct conv loop nest")
    n, channel, *classes, rows, cols = spatial
    classes = [loop for loop in classes if loop is not None]
    reduce = [loop for loop in reduce if loop is not None]

    fi, yi, xi = outer_product_tile(tile, *(_extent(sch, lp) if lp is not None else 1 for lp in (channel, rows, cols)))
    co, ci = _split(sch, channel, fi)
    yo, yi_loop = _split(sch, rows, yi)
    xo, xi_loop = _split(sch, cols, xi)
    outer = [*classes, co] if per_image else [n, co, *classes]
    sch.reorder(*(lp for lp in (*outer, yo, xo, *reduce, ci, yi_loop, xi_loop) if lp is not None))
    acc = sch.cache_write(conv, 0, "global")
    sch.reverse_compute_at(acc, _innermost(xo, yo, co, *classes, n))
    if per_image:
        for pad in pads:
            sch.compute_at(pad, n)
        sch.parallel(n)
    else:
        for block in (*pads, *interleave):
            _parallel_outer(sch, block)
        sch.parallel(sch.fuse(n, co) if co is not None else n)
    for loop in (ci, yi_loop):
        if loop is not None:
            sch.unroll(loop)
    if xi_loop is not None:
        sch.vectorize(xi_loop)
    if reduce:
        sch.decompose_reduction(conv, reduce[0])
    sch.vectorize(sch.get_loops(acc)[-1])
    for block in outputs:
        _parallel_outer(sch, block)


def _schedule_grad_weight(func: _Func, conv, tile: RegisterTile, threads: int) -> None:
    """Batch split over threads, partial sums ``filters x channels x taps x lanes`` per part."""
    sch = func.sch
    f, c, i, j, rn, ry, rx = sch.get_loops(conv)
    outputs = func.epilogue([conv])
    pads = func.named(dense_conv_te.PHASE_PAD)
    rxo, rxi = sch.split(rx, [None, largest_divisor(_extent(sch, rx), tile.lanes)])
    lanes = sch.rfactor(rxi, 4)  # partial sums [f, c, i, j, lane]
    f, c, i, j, rn, ry, rxo, rxi = sch.get_loops(lanes)
    part, rn_rest = sch.split(rn, [largest_divisor(_extent(sch, rn), threads), None])
    parts = sch.rfactor(part, 0)  # partial sums [part, f, c, i, j, lane]
    f, c, i, j, part, rn_rest, ry, rxo, rxi = sch.get_loops(parts)
    fi_size, ci_size = inner_product_tile(tile, _extent(sch, f), _extent(sch, c), _extent(sch, j), _extent(sch, rxi))
    fo, fi = sch.split(f, [None, fi_size])
    co, ci = sch.split(c, [None, ci_size])
    sch.reorder(part, rn_rest, fo, co, i, ry, rxo, fi, ci, j, rxi)
    sch.parallel(part)
    for pad in pads:
        sch.compute_at(pad, rn_rest)
    sch.unroll(fi)
    sch.unroll(ci)
    sch.unroll(j)
    sch.vectorize(rxi)
    sch.decompose_reduction(parts, rn_rest)
    sch.compute_at(lanes, sch.get_loops(conv)[0])
    sch.parallel(sch.get_loops(conv)[0])
    for block in outputs:
        _parallel_outer(sch, block, 1)


def schedule_conv(func: tirx.PrimFunc, tile: RegisterTile, threads: int | None = None) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it is not a conv this schedule takes.

    Parameters
    ----------
    func : tvm.tirx.PrimFunc
        A legalized (and possibly fused) PrimFunc.
    tile : RegisterTile
        The target's accumulator budget.
    threads : int, optional
        Threads the parallel loops are split for (default :func:`schedules.threads.num_threads`).

    Returns
    -------
    tvm.tirx.PrimFunc or None
        With ``tir.is_scheduled`` set.

    Raises
    ------
    RuntimeError or ValueError
        When a schedule primitive refuses the function (``tvm.s_tir.ScheduleError``, or a failed
        check inside one).
    """
    threads = threads or num_threads()
    sch = s_tir.Schedule(func)
    blocks = _Func(sch)
    if len(blocks.reductions) != 1:
        return None
    conv = blocks.reductions[0]
    name = _name(sch, conv)
    if name.startswith(_DIRECT):
        _schedule_direct(blocks, conv, tile, threads)
    elif name.startswith(dense_conv_te.GRAD_WEIGHT):
        _schedule_grad_weight(blocks, conv, tile, threads)
    else:
        return None
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="mest.ScheduleDenseConv")
class ScheduleDenseConv:
    """Schedule the unscheduled dense convolutions of a legalized module (see the module docstring).

    Parameters
    ----------
    target : str or TargetSpec
        Target of the ``devices`` table whose registers size the tiles (default: this machine).
    threads : int, optional
        Threads the parallel loops are split for (default :func:`schedules.threads.num_threads`).
    """

    def __init__(self, target: str | TargetSpec = "x86", threads: int | None = None):
        self.tile = RegisterTile.for_target(target)
        self.threads = threads

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        out = mod.clone()
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tir.is_scheduled" in func.attrs:
                continue
            try:
                scheduled = schedule_conv(func, self.tile, self.threads)
            except (RuntimeError, ValueError):  # a primitive refused it (ScheduleError, or a failed check)
                scheduled = None
            if scheduled is not None:
                out[gvar] = scheduled
        return out
