"""LowerSparseConv: annotated convs become call_tir of the schedules kernel, or a dense conv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from schedules.formats import pack
from schedules.kernels import forward_primfunc
from tvm_passes.errors import CompileError
from tvm_passes.kernels import SchedulesKernels
from tvm_passes.lower_sparse_conv import LowerSparseConv

RNG = np.random.default_rng(2)
W = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
MASK = RNG.random((8, 4, 3, 3)) < 0.2
NNZ = int(MASK.sum())


def _before(kernel: str) -> tvm.IRModule:
    @I.ir_module
    class Before:
        @R.function(private=True)
        def mest_conv(x: R.Tensor((2, 4, 8, 8), "float32"), w: R.Tensor((8, 4, 3, 3), "float32"),
                      mask: R.Tensor((8, 4, 3, 3), "bool")) -> R.Tensor((2, 8, 8, 8), "float32"):
            R.func_attr({"Composite": "mest.sparse_conv2d", "mest.fqn": "conv.weight", "mest.scheme": "irregular",
                         "mest.density": 0.2, "mest.kernel": kernel})
            with R.dataflow():
                lv = R.multiply(w, R.astype(mask, "float32"))
                gv = R.nn.conv2d(x, lv, padding=[1, 1, 1, 1], out_dtype="float32")
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((2, 4, 8, 8), "float32"), w: R.Tensor((8, 4, 3, 3), "float32"),
                 mask: R.Tensor((8, 4, 3, 3), "bool")) -> R.Tensor((2, 8, 8, 8), "float32"):
            cls = Before
            with R.dataflow():
                lv = cls.mest_conv(x, w, mask)
                gv = R.nn.relu(lv)
                R.output(gv)
            return gv

    return relax.transform.BindParams("main", {"w": W, "mask": MASK})(Before)


@I.ir_module(check_well_formed=False)  # the kernel placeholder is replaced in the test
class ExpectedSparse:
    @T.prim_func
    def sparse_irregular_conv(x: T.handle):  # replaced by the schedules kernel below
        T.evaluate(0)

    @R.function
    def main(x: R.Tensor((2, 4, 8, 8), "float32"), row_ptr: R.Tensor((9,), "uint8"),
             positions: R.Tensor((NNZ,), "uint8"), values: R.Tensor((NNZ,), "float32")) -> R.Tensor((2, 8, 8, 8), "float32"):
        cls = ExpectedSparse
        with R.dataflow():
            lv = R.call_tir(cls.sparse_irregular_conv, (x, row_ptr, positions, values), out_ty=R.Tensor((2, 8, 8, 8), "float32"))
            gv = R.nn.relu(lv)
            R.output(gv)
        return gv


@I.ir_module
class ExpectedDense:
    @R.function
    def main(x: R.Tensor((2, 4, 8, 8), "float32"), w: R.Tensor((8, 4, 3, 3), "float32")) -> R.Tensor((2, 8, 8, 8), "float32"):
        with R.dataflow():
            lv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], out_dtype="float32")
            gv = R.nn.relu(lv)
            R.output(gv)
        return gv


def test_sparse_layer_becomes_call_tir_of_the_schedules_kernel():
    after = LowerSparseConv(SchedulesKernels("x86"))(_before("irregular"))
    fmt = pack("irregular", torch.from_numpy(W), torch.from_numpy(MASK))
    buffers = {name: np.asarray(value) for name, value in fmt.buffers("forward").items()}
    assert list(buffers) == ["row_ptr", "positions", "values"]
    kernel = forward_primfunc(fmt, (2, 4, 8, 8), 1).with_attrs({
        "global_symbol": "sparse_irregular_conv", "op_pattern": 8, "mest.fqn": "conv.weight",
        "mest.scheme": "irregular", "mest.kernel": "irregular", "mest.bytes_stored": fmt.nbytes,
        "mest.knobs": "default knobs",
    })
    expected = relax.transform.BindParams("main", buffers)(ExpectedSparse)
    expected["sparse_irregular_conv"] = kernel
    tvm.ir.assert_structural_equal(after, expected)


def test_dense_marked_layer_becomes_dense_conv_on_the_masked_weight():
    after = LowerSparseConv(SchedulesKernels("x86"))(_before("dense"))
    expected = relax.transform.BindParams("main", {"w": W * MASK})(ExpectedDense)
    tvm.ir.assert_structural_equal(after, expected)


def test_lowered_module_computes_the_masked_conv():
    x = RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)
    after = LowerSparseConv(SchedulesKernels("x86"))(_before("irregular"))
    vm = relax.VirtualMachine(tvm.compile(after, "llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(W * MASK), padding=1)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_channel_layer_needs_channel_compaction_first():
    before = _before("irregular")
    func = before["mest_conv"].with_attrs({"mest.scheme": "channel", "mest.kernel": "channel"})
    before["mest_conv"] = func
    with pytest.raises(CompileError, match="ChannelCompaction, which must run first"):
        LowerSparseConv(SchedulesKernels("x86"))(before)
