"""ScheduleDenseMatmul: the classifier's three matmuls, scheduled, equal PyTorch's; others are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from dense_helpers import assert_close, has_parallel_loop, legalized, one_op, prim_funcs, run
from tvm_passes.schedule_dense_matmul import PARALLEL_MIN_MACS, ScheduleDenseMatmul

#: (A, B) of A @ B: a ResNet classifier forward (x @ W^T), its grad-input (dy @ W) and grad-weight
#: (dy^T @ x), and odd sizes.
SHAPES = {
    "forward": ((64, 128), (128, 10)),
    "grad-input": ((64, 10), (10, 128)),
    "grad-weight": ((10, 64), (64, 128)),
    "odd": ((7, 13), (13, 5)),
}


def _arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("case", list(SHAPES))
def test_matmul_equals_pytorch(case):
    a_shape, b_shape = SHAPES[case]
    after = ScheduleDenseMatmul()(legalized(one_op([("a", a_shape), ("b", b_shape)], relax.op.matmul)))
    (func,) = prim_funcs(after).values()
    assert "tirx.is_scheduled" in func.attrs
    assert not has_parallel_loop(func)  # all far below PARALLEL_MIN_MACS
    a, b = _arrays(a_shape, b_shape)
    assert_close(run(after, [a, b]), (torch.from_numpy(a) @ torch.from_numpy(b)).numpy())


@pytest.mark.parametrize("fuse_transpose", [False, True], ids=["matmul", "NT_matmul"])
def test_linear_with_bias_epilogue_equals_pytorch(fuse_transpose):
    """As imported (transpose, then matmul + bias) and with Relax's FuseTransposeMatmul (one NT_matmul)."""
    mod = one_op([("x", (64, 128)), ("w", (10, 128)), ("b", (10,))],
                 lambda x, w, b: relax.op.add(relax.op.matmul(x, relax.op.permute_dims(w)), b))
    before = [relax.transform.FuseTransposeMatmul()] if fuse_transpose else []
    after = ScheduleDenseMatmul()(legalized(mod, *before))
    fused = [f for name, f in prim_funcs(after).items() if "matmul" in name]
    assert len(fused) == 1 and "tirx.is_scheduled" in fused[0].attrs
    assert len(prim_funcs(after)) == (1 if fuse_transpose else 2)
    if not fuse_transpose:  # the bias is added in the tile's write-back
        assert 'T.sblock("T_add")' not in fused[0].script()
    x, w, b = _arrays((64, 128), (10, 128), (10,))
    assert_close(run(after, [x, w, b]), torch.nn.functional.linear(*(torch.from_numpy(t) for t in (x, w, b))).numpy())


def test_a_large_matmul_runs_in_parallel():
    side = round(PARALLEL_MIN_MACS ** (1 / 3)) + 1
    after = ScheduleDenseMatmul()(legalized(one_op([("a", (side, side)), ("b", (side, side))], relax.op.matmul)))
    (func,) = prim_funcs(after).values()
    assert has_parallel_loop(func)
    a, b = _arrays((side, side), (side, side))
    assert_close(run(after, [a, b]), a @ b)


def test_batched_matmul_is_left_alone():
    before = legalized(one_op([("a", (2, 4, 6)), ("b", (2, 6, 3))], relax.op.matmul))
    tvm.ir.assert_structural_equal(ScheduleDenseMatmul()(before), before)


def test_already_scheduled_matmul_is_left_alone():
    before = legalized(one_op([("a", (4, 6)), ("b", (6, 3))], relax.op.matmul))
    name = next(iter(prim_funcs(before)))
    before[name] = before[name].with_attr("tir.is_scheduled", True)
    tvm.ir.assert_structural_equal(ScheduleDenseMatmul()(before), before)


def test_nt_matmul_of_odd_sizes_equals_pytorch():
    mod = one_op([("a", (7, 13)), ("b", (5, 13))], lambda a, b: relax.op.matmul(a, relax.op.permute_dims(b)))
    after = ScheduleDenseMatmul()(legalized(mod, relax.transform.FuseTransposeMatmul()))
    (func,) = prim_funcs(after).values()
    assert "tirx.is_scheduled" in func.attrs
    a, b = _arrays((7, 13), (5, 13))
    assert_close(run(after, [a, b]), a @ b.T)
