"""ScheduleGlobalPool: a mean over the innermost axes, scheduled, equals PyTorch's pool; others are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from dense_helpers import assert_close, has_parallel_loop, legalized, one_op, prim_funcs, run
from tvm_passes.schedule_dense_ops import ScheduleDenseOps
from tvm_passes.schedule_global_pool import ScheduleGlobalPool


@pytest.mark.parametrize("shape", [(64, 128, 8, 8), (3, 5, 7, 7)], ids=["resnet32", "odd"])
def test_global_average_pool_equals_pytorch(shape):
    after = ScheduleGlobalPool()(legalized(one_op([("x", shape)], lambda x: relax.op.mean(x, axis=[2, 3]))))
    (func,) = prim_funcs(after).values()
    assert "tirx.is_scheduled" in func.attrs and has_parallel_loop(func)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert_close(run(after, [x]), torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 1).flatten(1).numpy())


def test_a_sum_over_outer_axes_is_left_alone():
    before = legalized(one_op([("x", (4, 6, 5, 5))], lambda x: relax.op.sum(x, axis=[0, 2, 3])))  # BN statistics
    tvm.ir.assert_structural_equal(ScheduleGlobalPool()(before), before)


def test_a_max_over_innermost_axes_is_left_alone():
    before = legalized(one_op([("x", (4, 6, 5, 5))], lambda x: relax.op.max(x, axis=[2, 3])))
    tvm.ir.assert_structural_equal(ScheduleGlobalPool()(before), before)


def test_dense_ops_leave_the_rest_to_dlight():
    """ScheduleDenseOps: the pool gets our schedule, a BN-statistics mean dlight's."""
    mod = one_op([("x", (4, 6, 5, 5))],
                 lambda x: relax.op.add(relax.op.mean(x, axis=[2, 3]), relax.op.mean(x, axis=[0, 2, 3])))
    after = ScheduleDenseOps()(legalized(mod))
    funcs = prim_funcs(after)
    assert len(funcs) == 2 and all("tirx.is_scheduled" in f.attrs for f in funcs.values())
    x = np.random.default_rng(1).standard_normal((4, 6, 5, 5)).astype(np.float32)
    assert_close(run(after, [x]), x.mean(axis=(2, 3)) + x.mean(axis=(0, 2, 3)))
