"""LegalizeDenseConv: the three convs of a training step become our TE computes; everything else stays."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from dense_helpers import one_op, prim_funcs
from tvm_passes import dense_conv_te
from tvm_passes.legalize_dense_conv import LegalizeDenseConv


def _gradient_module(x_shape, w_shape, stride, padding) -> tvm.IRModule:
    """``main_adjoint`` of ``sum(conv2d(x, w) * g)`` by Relax's Gradient: forward, grad-input, grad-weight."""
    bb = relax.BlockBuilder()
    x, w = relax.Var("x", R.Tensor(x_shape, "float32")), relax.Var("w", R.Tensor(w_shape, "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding))
            loss = bb.emit_output(relax.op.sum(y))
        bb.emit_func_output(loss)
    return relax.transform.Gradient("main", require_grads=[x, w])(bb.get())


def _called_blocks(mod: tvm.IRModule) -> set[str]:
    names = set()
    for func in prim_funcs(mod).values():
        names.update(line.split('"')[1] for line in func.script().splitlines() if "T.sblock(\"" in line)
    return names


def test_the_three_convs_of_a_gradient_become_our_computes():
    before = _gradient_module((2, 3, 10, 10), (5, 3, 3, 3), 2, 1)
    after = LegalizeDenseConv()(before)
    script = after["main_adjoint"].script()
    assert "R.nn.conv2d" not in script and "R.nn.conv2d_transpose" not in script
    assert script.count("R.call_tir") == 3
    blocks = _called_blocks(after)
    for name in (dense_conv_te.FORWARD, dense_conv_te.GRAD_INPUT, dense_conv_te.GRAD_INPUT_INTERLEAVE,
                 dense_conv_te.GRAD_WEIGHT, dense_conv_te.PHASE_PAD):
        assert name in blocks
    assert "R.sum" in script  # the other bindings are untouched
    # Gradient's 4x4 grad-weight conv, sliced to 3x3, became the compute of the 3x3 taps alone
    assert "R.strided_slice" in before["main_adjoint"].script() and "R.strided_slice" not in script
    (grad_weight,) = [f for name, f in prim_funcs(after).items() if name.startswith("dense_conv2d_grad_weight")]
    assert [int(d) for d in grad_weight.params[-1].shape] == [5, 3, 3, 3]


def test_a_slice_that_is_not_leading_taps_is_kept():
    before = _gradient_module((2, 3, 10, 10), (5, 3, 3, 3), 2, 1)

    @relax.expr_functor.mutator
    class _LastTaps(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.name == "relax.strided_slice":
                return relax.op.strided_slice(call.args[0], [2, 3], [1, 1], [4, 4])
            return call

    before["main_adjoint"] = _LastTaps().visit_expr(before["main_adjoint"])
    after = LegalizeDenseConv()(before)
    assert "R.strided_slice" in after["main_adjoint"].script()
    (grad_weight,) = [f for name, f in prim_funcs(after).items() if name.startswith("dense_conv2d_grad_weight")]
    assert [int(d) for d in grad_weight.params[-1].shape] == [5, 3, 4, 4]


def test_a_1x1_stride_1_conv_reads_its_input_without_a_copy():
    mod = one_op([("x", (2, 4, 5, 5)), ("w", (6, 4, 1, 1))], lambda x, w: relax.op.nn.conv2d(x, w))
    blocks = _called_blocks(LegalizeDenseConv()(mod))
    assert dense_conv_te.IMAGE_VIEW in blocks and dense_conv_te.PHASE_PAD not in blocks


@pytest.mark.parametrize(
    "x_shape, w_shape, body",
    [
        ((2, 4, 8, 8), (4, 2, 3, 3), lambda x, w: relax.op.nn.conv2d(x, w, groups=2)),
        ((2, 4, 8, 8), (4, 4, 3, 3), lambda x, w: relax.op.nn.conv2d(x, w, dilation=2)),
        ((2, 8, 8, 4), (3, 3, 4, 4), lambda x, w: relax.op.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="HWIO")),
        ((2, 4, 8, 8), (2, 4, 3, 3), lambda x, w: relax.op.nn.conv2d(x, w, strides=2, data_layout="CNHW",
                                                                      kernel_layout="IOHW", out_layout="CNHW")),
        ((2, 4, 8, 8), (4, 4, 3, 3), lambda x, w: relax.op.nn.conv2d_transpose(x, w, dilation=2, kernel_layout="IOHW")),
        ((2, 4, 8, 8), (4, 2, 3, 3), lambda x, w: relax.op.nn.conv2d_transpose(x, w, groups=2, kernel_layout="IOHW")),
    ],
    ids=["grouped", "dilated", "nhwc", "strided-grad-weight", "dilated-transpose", "grouped-transpose"],
)
def test_refused_convs_are_left_to_legalize_ops(x_shape, w_shape, body):
    mod = one_op([("x", x_shape), ("w", w_shape)], body)
    tvm.ir.assert_structural_equal(LegalizeDenseConv()(mod), mod)


def test_float16_conv_is_left_alone():
    bb = relax.BlockBuilder()
    x, w = relax.Var("x", R.Tensor((1, 2, 4, 4), "float16")), relax.Var("w", R.Tensor((2, 2, 3, 3), "float16"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, w))
        bb.emit_func_output(out)
    mod = bb.get()
    tvm.ir.assert_structural_equal(LegalizeDenseConv()(mod), mod)
