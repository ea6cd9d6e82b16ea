"""ScheduleChannelReduction and ScheduleElementwise: the batch-norm glue of a training step, scheduled,
computes what it computed unscheduled; other functions are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from dense_helpers import assert_close, has_parallel_loop, legalized, one_op, prim_funcs, run
from tvm_passes.schedule_channel_reduction import ScheduleChannelReduction
from tvm_passes.schedule_elementwise import ScheduleElementwise


def _float64_statistic(x, w):
    """sum over N, H, W of x * w in float64, as TrainBatchNorm's mean (fused with its producers)."""
    return relax.op.sum(relax.op.astype(relax.op.multiply(x, w), "float64"), axis=[0, 2, 3])


@pytest.mark.parametrize("shape", [(64, 32, 32, 32), (5, 3, 7, 9)], ids=["resnet32", "odd"])
def test_per_channel_float64_sum_equals_numpy(shape):
    mod = one_op([("x", shape), ("w", (shape[0], 1, 1, 1))], _float64_statistic)
    after = ScheduleChannelReduction()(legalized(mod))
    funcs = prim_funcs(after)
    assert all("tirx.is_scheduled" in f.attrs and has_parallel_loop(f) for f in funcs.values())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) + 3.0
    w = (rng.random((shape[0], 1, 1, 1)) < 0.8).astype(np.float32)
    expected = (x.astype(np.float64) * w).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(run(after, [x, w]), expected, rtol=1e-12)


def test_collapse_sum_of_a_broadcast_gradient_is_scheduled():
    mod = one_op([("d", (4, 6, 5, 5))], lambda d: relax.op.collapse_sum_to(relax.op.astype(d, "float64"), (1, 6, 1, 1)))
    after = ScheduleChannelReduction()(legalized(mod))
    assert all("tirx.is_scheduled" in f.attrs for f in prim_funcs(after).values())
    d = np.random.default_rng(1).standard_normal((4, 6, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(after, [d]), d.astype(np.float64).sum(axis=(0, 2, 3), keepdims=True), rtol=1e-12)


def test_convs_and_pools_are_left_to_their_schedules():
    conv = one_op([("x", (2, 4, 6, 6)), ("w", (8, 4, 3, 3))], lambda x, w: relax.op.nn.conv2d(x, w, padding=1))
    pool = one_op([("x", (4, 6, 5, 5))], lambda x: relax.op.mean(x, axis=[2, 3]))
    for mod in (conv, pool):
        before = legalized(mod)
        tvm.ir.assert_structural_equal(ScheduleChannelReduction()(before), before)


@pytest.mark.parametrize("shape", [(64, 32, 32, 32), (5, 3, 7, 9)], ids=["resnet32", "odd"])
def test_elementwise_glue_is_parallel_and_equal(shape):
    def glue(x, scale, shift):  # a batch norm's application and ReLU, the scale broadcast in float64
        scale64 = relax.op.reshape(relax.op.astype(scale, "float64"), (1, shape[1], 1, 1))
        broadcast = relax.op.astype(relax.op.broadcast_to(scale64, shape), "float32")
        return relax.op.nn.relu(relax.op.add(relax.op.multiply(x, broadcast), relax.op.reshape(shift, (1, shape[1], 1, 1))))

    mod = one_op([("x", shape), ("scale", (shape[1],)), ("shift", (shape[1],))], glue)
    before = legalized(mod)
    after = ScheduleElementwise()(before)
    funcs = prim_funcs(after)
    assert all("tirx.is_scheduled" in f.attrs for f in funcs.values())
    assert any(has_parallel_loop(f) for f in funcs.values()) == (np.prod(shape) >= 4096)  # small ones stay serial
    rng = np.random.default_rng(2)
    args = [rng.standard_normal(shape).astype(np.float32), rng.random(shape[1]).astype(np.float32),
            rng.standard_normal(shape[1]).astype(np.float32)]
    assert_close(run(after, args), run(before, args))


def test_a_reduction_is_not_elementwise():
    before = legalized(one_op([("x", (4, 6, 5, 5))], lambda x: relax.op.sum(x, axis=[0, 2, 3])))
    tvm.ir.assert_structural_equal(ScheduleElementwise()(before), before)
