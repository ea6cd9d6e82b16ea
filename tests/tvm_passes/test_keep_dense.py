"""KeepDense: layers above the crossover density, or with no kernel for their geometry, stay dense."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_passes.config import DENSE_CROSSOVER
from tvm_passes.keep_dense import LAYERS_ATTR, KeepDense
from tvm_passes.sparse_conv import SparseConvInfo, make_function


def _module(scheme: str, density: float, out_channels: int = 8, kernel: int = 3, stride: int = 1,
            kernel_attr: str | None = None, reason: str = "") -> tvm.IRModule:
    """``main(x, w, mask)`` calling one annotated conv (built as AnnotateSparsity builds it)."""
    x_ty = relax.TensorType((1, 8, 8, 8), "float32")
    w_ty = relax.TensorType((out_channels, 8, kernel, kernel), "float32")
    pad = kernel // 2
    conv = relax.op.nn.conv2d(relax.Var("x", x_ty), relax.Var("w", w_ty), strides=stride, padding=pad,
                              out_dtype="float32")
    info = SparseConvInfo("layer.conv.weight", scheme, density, kernel_attr or scheme, reason)
    func = make_function(conv.attrs, x_ty, w_ty, info)
    bb = relax.BlockBuilder()
    gvar = bb.add_func(func, "mest_layer_conv")
    x, w = relax.Var("x", x_ty), relax.Var("w", w_ty)
    mask = relax.Var("mask", relax.TensorType(w_ty.shape, "bool"))
    with bb.function("main", [x, w, mask]):
        with bb.dataflow():
            out = bb.emit_output(relax.Call(gvar, [x, w, mask]))
        bb.emit_func_output(out)
    return bb.get()


def _decided(mod: tvm.IRModule, kernel: str, reason: str = "") -> tvm.IRModule:
    """``mod`` with the record KeepDense leaves for the report."""
    return mod.with_attr(LAYERS_ATTR, {"layer.conv.weight": {"kernel": kernel, "reason": reason}})


def test_sparse_enough_layer_is_left_sparse_and_recorded():
    before = _module("irregular", 0.1)
    tvm.ir.assert_structural_equal(KeepDense(DENSE_CROSSOVER["x86"])(before), _decided(before, "irregular"))


def test_layer_above_crossover_stays_dense_with_reason():
    limit = DENSE_CROSSOVER["x86"]["irregular"]
    reason = f"density 0.500 above the irregular crossover {limit:.2f}: dense is faster"
    expected = _module("irregular", 0.5, kernel_attr="dense", reason=reason)
    tvm.ir.assert_structural_equal(KeepDense(DENSE_CROSSOVER["x86"])(_module("irregular", 0.5)),
                                   _decided(expected, "dense", reason))


def test_block_on_channels_not_multiple_of_four_stays_dense():
    after = KeepDense(DENSE_CROSSOVER["x86"])(_module("block", 0.1, out_channels=6))
    reason = "block sparsity needs out_channels divisible by 4, got 6"
    expected = _module("block", 0.1, out_channels=6, kernel_attr="dense", reason=reason)
    tvm.ir.assert_structural_equal(after, _decided(expected, "dense", reason))


def test_pattern_on_a_1x1_conv_stays_dense_but_channel_compacts_it():
    after = KeepDense(DENSE_CROSSOVER["x86"])(_module("pattern", 0.1, kernel=1))
    assert after["mest_layer_conv"].attrs["mest.kernel"] == "dense"
    assert "needs a 3x3 conv, got kernel (1, 1)" in str(after["mest_layer_conv"].attrs["mest.reason"])
    channel = _module("channel", 0.25, kernel=1)
    tvm.ir.assert_structural_equal(KeepDense(DENSE_CROSSOVER["x86"])(channel), _decided(channel, "channel"))


def test_the_table_has_every_target_and_scheme():
    for target in ("x86", "arm64", "armv7"):
        assert set(DENSE_CROSSOVER[target]) == {"irregular", "block", "pattern", "channel"}
        assert all(0.0 < value <= 1.0 for value in DENSE_CROSSOVER[target].values())
    assert np.isclose(DENSE_CROSSOVER["x86"]["channel"], 1.0)
