"""ScheduleDenseConv: a default CPU schedule for the dense convolutions the tuning database lacks.

Where it runs: after ``LegalizeOps``/``FuseOps``/``FuseTIR`` and after ``MetaScheduleApplyDatabase``
(phase 6 of the pipeline): it only touches PrimFuncs that are still unscheduled (neither mark of
:data:`~tvm_passes.dense_schedule.SCHEDULED_MARKS`), so a tuned record always wins. In a training
step, run :class:`~tvm_passes.legalize_dense_conv.LegalizeDenseConv` before ``LegalizeOps`` so that
the grad-input and grad-weight convs are in the forms taken here.

What it schedules, each possibly fused with element-wise epilogues (inlined into the write-back of
the result where TVM allows it, else run as parallel loops of their own):

- **direct convs**: TOPI's ``conv2d_nchw``, and the forward and grad-input convs of
  :mod:`tvm_passes.dense_conv_te`. A tile of ``channels x rows x columns`` outputs is accumulated in
  vector registers (sizes from :func:`~tvm_passes.dense_schedule.outer_product_tile` and the target's
  :class:`~tvm_passes.dense_schedule.RegisterTile`; columns vectorised, the rest unrolled), the
  reduction loops outside the tile; in parallel over the images, each padding its own input into a
  per-thread copy first (over images and channel tiles, with one padding pass beforehand, when the
  batch is smaller than four images a thread). The grad-input's residue classes are interleaved
  into the output image by image.
- **the grad-weight conv** of :mod:`tvm_passes.dense_conv_te`: the batch is split into one part
  per thread; each part pads a few images at a time (enough pixels for a long inner loop) and
  accumulates ``filters x channels x taps`` partial sums in registers, vectorised along the output
  columns (a lane per column), into a per-part buffer; the parts and the lanes are then summed.

What it refuses (leaves unchanged): scheduled functions, grouped or NHWC convs (no
block of these names), PrimFuncs with any other reduction block, and any function where a schedule
primitive fails.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from devices.targets import TargetSpec
from schedules.threads import num_threads

from . import dense_conv_te
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

#: Reduction blocks of the direct convs: TOPI's forward, our forward, our grad-input classes.
_DIRECT = ("conv2d_nchw", dense_conv_te.FORWARD, dense_conv_te.GRAD_INPUT)
#: Padded copies the direct and grad-weight convs read (TOPI's and ours).
_PADS = ("pad_temp", dense_conv_te.PHASE_PAD)
_block_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")
#: Reduction steps a grad-weight tile takes between loading and storing its partial sums: images
#: are taken together until their pixels give that many (a 8x8 image gives 8 steps of 8 lanes).
#: Measured on ResNet-32's layer3 shortcut (8x8 outputs, 64 -> 128 channels, AMD Zen 3): 32 ran 30%
#: faster than 64 and 40% faster than 128, whose images' padded input and ``dy`` outgrow L2.
_STEPS_PER_TILE = 32
#: Images per thread below which the direct conv also splits the channels over the threads.
_IMAGES_PER_THREAD = 4


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


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


def _schedule_direct(func: FuncBlocks, conv, tile: RegisterTile, threads: int) -> None:
    """Register-tiled direct conv: spatial ``n, channel, *classes, rows, columns``; reductions inside."""
    sch = func.sch
    pads = func.named(*_PADS)
    interleave = func.named(dense_conv_te.GRAD_INPUT_INTERLEAVE)
    taps = func.named(dense_conv_te.GRAD_INPUT_TAPS)
    epilogue = func.epilogue([conv, *interleave, *taps], _PADS)
    outputs = func.try_reverse_inline([b for b in epilogue if b not in interleave])
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
    outer = [*classes, co, yo, xo] if per_image else [n, co, *classes, yo, xo]
    sch.reorder(*(lp for lp in (*outer, *reduce, ci, yi_loop, xi_loop) if lp is not None))
    write_back = write_back_at(sch, conv, _innermost(xo, yo, co, *classes, n))
    if per_image:
        for pad in pads:
            sch.compute_at(pad, n)
        sch.parallel(n)
    else:
        for block in (*pads, *interleave):
            parallel_outer(sch, block)
        sch.parallel(sch.fuse(n, co) if co is not None else n)
    unroll_and_vectorize(sch, [ci, yi_loop], xi_loop)
    if reduce:
        sch.decompose_reduction(conv, reduce[0])
    unroll_and_vectorize(sch, [], write_back)
    for block in interleave:
        _interleave_by_phase(sch, block)
    for block in outputs:
        parallel_outer(sch, block)


def _interleave_by_phase(sch: s_tir.Schedule, block) -> None:
    """Loops ``c, a, ph, b, pw`` (``h = s*a + ph``, ``w = s*b + pw``), ``ph`` and ``pw`` unrolled.

    Each unrolled copy has constant residues, so its select folds away and the stores along ``b``
    form stride-``s`` groups that LLVM's loop vectorizer turns into shuffles and full-width stores.
    """
    sh, sw = (int(v) for v in sch.get(block).annotations[dense_conv_te.STRIDE_ATTR])
    *outer, h, w = sch.get_loops(block)
    a, ph = sch.split(h, [None, sh])
    b, pw = sch.split(w, [None, sw])
    sch.reorder(a, ph, b, pw)
    sch.unroll(ph)
    sch.unroll(pw)


def _schedule_grad_weight(func: FuncBlocks, conv, tile: RegisterTile, threads: int) -> None:
    """Batch split over threads, partial sums ``filters x channels x taps x lanes`` per part."""
    sch = func.sch
    f, c, i, j, rn, ry, rx = sch.get_loops(conv)
    outputs = func.epilogue([conv], _PADS)
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
    steps_per_image = _extent(sch, ry) * _extent(sch, rxo)
    images = largest_divisor(_extent(sch, rn_rest), -(-_STEPS_PER_TILE // steps_per_image))
    rn_outer, rn_inner = sch.split(rn_rest, [None, images])
    sch.reorder(part, rn_outer, fo, co, i, rn_inner, ry, rxo, fi, ci, j, rxi)
    sch.parallel(part)
    for pad in pads:
        sch.compute_at(pad, rn_outer)
    unroll_and_vectorize(sch, [fi, ci, j], rxi)
    sch.decompose_reduction(parts, rn_outer)
    sch.compute_at(lanes, sch.get_loops(conv)[0])
    sch.parallel(sch.get_loops(conv)[0])
    for block in outputs:
        parallel_outer(sch, block, 1)


def schedule_conv(func: tirx.PrimFunc, tile: RegisterTile, threads: int | None = None) -> tirx.PrimFunc | None:
    """The scheduled ``func``, or None when it is not a conv this schedule takes.

    ``tile`` is the target's accumulator budget, ``threads`` the threads the parallel loops are split
    for (default :func:`schedules.threads.num_threads`); the contract is that of the ``schedule`` of
    :func:`~tvm_passes.dense_schedule.schedule_unscheduled`.
    """
    threads = threads or num_threads()
    sch = s_tir.Schedule(func)
    blocks = FuncBlocks(sch)
    if len(blocks.reductions) != 1:
        return None
    conv = blocks.reductions[0]
    name = block_name(sch, conv)
    if name.startswith(_DIRECT):
        _schedule_direct(blocks, conv, tile, threads)
    elif name.startswith(dense_conv_te.GRAD_WEIGHT):
        _schedule_grad_weight(blocks, conv, tile, threads)
    else:
        return None
    return mark_scheduled(sch.mod["main"])


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

    def __init__(self, target: str | TargetSpec = "host", threads: int | None = None):
        self.tile = RegisterTile.for_target(target)
        self.threads = threads

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        return schedule_unscheduled(mod, lambda func: schedule_conv(func, self.tile, self.threads))
