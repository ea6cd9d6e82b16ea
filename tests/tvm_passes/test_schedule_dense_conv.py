"""ScheduleDenseConv: the dense convs of a training step, scheduled, equal PyTorch's; others are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, te
from tvm.script import ir as I
from tvm.script import relax as R

from dense_helpers import assert_close, conv_reference, has_parallel_loop, legalized, one_op, prim_funcs, run
from devices.targets import tvm_target
from tvm_passes.dense_schedule import SCHEDULED_MARKS
from tvm_passes.legalize_dense_conv import LegalizeDenseConv
from tvm_passes.schedule_dense_conv import ScheduleDenseConv

#: x shape, weight shape, stride, padding: the stem (3 channels), 1x1 stride-2 shortcuts (odd input
#: too), 3x3 stride 2 on odd and even inputs (the grad-weight conv's 4x4 output is sliced), odd
#: channels and size at stride 1, and a 5x5 stride-3 conv.
CASES = {
    "stem": ((4, 3, 8, 8), (5, 3, 3, 3), 1, 1),
    "shortcut": ((4, 6, 8, 8), (10, 6, 1, 1), 2, 0),
    "shortcut-odd": ((3, 5, 9, 9), (7, 5, 1, 1), 2, 0),
    "3x3-s2-odd": ((4, 3, 9, 9), (4, 3, 3, 3), 2, 1),
    "3x3-s2-even": ((4, 4, 10, 10), (6, 4, 3, 3), 2, 1),
    "3x3-odd": ((4, 5, 7, 7), (7, 5, 3, 3), 1, 1),
    "5x5-s3": ((2, 2, 11, 11), (3, 2, 5, 5), 3, 2),
}


def _scheduled(mod, threads):
    after = ScheduleDenseConv("host", threads=threads)(legalized(mod, LegalizeDenseConv()))
    convs = {name: f for name, f in prim_funcs(after).items() if "conv" in name}
    assert convs, "no conv PrimFunc"
    for name, func in convs.items():
        assert all(mark in func.attrs for mark in SCHEDULED_MARKS), name
        assert has_parallel_loop(func), name
    return after


def _conv_module(x_shape, w_shape, stride, padding):
    """``forward(x, w) = conv2d(x, w)`` and ``main_adjoint(x, w, g)``, the gradient of ``sum(conv2d(x, w) * g)``
    by Relax's Gradient: the forward, grad-input and grad-weight convs of a training step, in one module."""
    bb = relax.BlockBuilder()
    out_size = [(x_shape[d] + 2 * padding - w_shape[d]) // stride + 1 for d in (2, 3)]
    x, w = relax.Var("x", R.Tensor(x_shape, "float32")), relax.Var("w", R.Tensor(w_shape, "float32"))
    g = relax.Var("g", R.Tensor((x_shape[0], w_shape[0], *out_size), "float32"))
    with bb.function("forward", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, w, strides=stride, padding=padding))
        bb.emit_func_output(y)
    x, w = relax.Var("x", R.Tensor(x_shape, "float32")), relax.Var("w", R.Tensor(w_shape, "float32"))
    with bb.function("main", [x, w, g]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(y, g)))
        bb.emit_func_output(loss)
    return relax.transform.Gradient("main", require_grads=[x, w])(bb.get())


def _arrays(x_shape, w_shape, stride, padding, seed=0):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    y_shape = conv_reference("forward", x, w, None, stride, padding).shape
    return x, w, rng.standard_normal(y_shape).astype(np.float32)


@pytest.mark.parametrize(
    "case, threads",
    [(case, 1) for case in CASES] + [("shortcut", 64), ("3x3-s2-odd", 64), ("stem", 64)],
)
def test_forward_grad_input_and_grad_weight_equal_pytorch(case, threads):
    """threads=1: each image pads its own copy; threads=64: the small-batch branch (padding pass first)."""
    x_shape, w_shape, stride, padding = CASES[case]
    x, w, g = _arrays(*CASES[case])
    vm = relax.VirtualMachine(tvm.compile(_scheduled(_conv_module(x_shape, w_shape, stride, padding), threads),
                                          tvm_target("host")), tvm.cpu())
    y = vm["forward"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    _, (dx, dw) = vm["main_adjoint"](*(tvm.runtime.tensor(a) for a in (x, w, g)))
    assert_close(y, conv_reference("forward", x, w, None, stride, padding))
    assert_close(dx.numpy(), conv_reference("grad_input", x, w, g, stride, padding))
    assert_close(dw.numpy(), conv_reference("grad_weight", x, w, g, stride, padding))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.shortcut = torch.nn.Conv2d(6, 8, 1, stride=2, bias=False)
        self.conv = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return (torch.relu(self.conv(h) + self.shortcut(h)) ** 2).sum()


def test_a_small_network_with_fused_epilogues_equals_pytorch_autograd():
    torch.manual_seed(0)
    model, x = _Block(), torch.randn(8, 3, 9, 9)
    params = [model.stem.weight, model.shortcut.weight, model.conv.weight]
    bb = relax.BlockBuilder()
    rx = relax.Var("x", R.Tensor(tuple(x.shape), "float32"))
    rw = [relax.Var(f"w{i}", R.Tensor(tuple(p.shape), "float32")) for i, p in enumerate(params)]
    with bb.function("main", [rx, *rw]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(rx, rw[0], padding=1)))
            s = relax.op.add(relax.op.nn.conv2d(h, rw[2], strides=2, padding=1),
                             relax.op.nn.conv2d(h, rw[1], strides=2))
            r = bb.emit(relax.op.nn.relu(s))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(r, r)))
        bb.emit_func_output(loss)
    mod = relax.transform.Gradient("main", require_grads=rw)(bb.get())
    after = _scheduled(mod, threads=1)
    assert any(name.startswith("fused_dense_conv2d_grad_input") for name in prim_funcs(after))
    value, grads = run(after, [x.numpy(), *(p.detach().numpy() for p in params)], "main_adjoint")
    loss = model(x)
    loss.backward()
    np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
    for grad, param in zip(grads, params):
        assert_close(grad, param.grad.numpy())


@I.ir_module
class ConvBlock:
    @R.function
    def main(x: R.Tensor((2, 8, 8, 8), "float32"), w: R.Tensor((12, 8, 3, 3), "float32"),
             b: R.Tensor((1, 12, 1, 1), "float32")) -> R.Tensor((2, 12, 4, 4), "float32"):
        with R.dataflow():
            lv = R.nn.conv2d(x, w, strides=[2, 2], padding=[1, 1, 1, 1], out_dtype="float32")
            lv1 = R.add(lv, b)
            gv = R.nn.relu(lv1)
            R.output(gv)
        return gv


@I.ir_module
class Elementwise:
    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            lv = R.add(x, x)
            gv = R.nn.relu(lv)
            R.output(gv)
        return gv


def test_topi_conv_is_scheduled_and_computes_the_same():
    """The inference pipeline legalizes with TOPI (no LegalizeDenseConv): its conv2d_nchw is taken too."""
    before = legalized(ConvBlock)
    after = ScheduleDenseConv()(before)
    funcs = prim_funcs(after)
    assert len(funcs) == 1 and "tir.is_scheduled" in next(iter(funcs.values())).attrs
    tvm.ir.assert_structural_equal(after["main"], before["main"])  # the Relax side is unchanged
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 8, 8, 8), (12, 8, 3, 3), (1, 12, 1, 1)))
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1)
                     + torch.from_numpy(b)).numpy()
    assert_close(run(after, [x, w, b]), ref)


@pytest.mark.parametrize("mark", SCHEDULED_MARKS)
def test_already_scheduled_function_is_left_alone(mark):
    before = legalized(ConvBlock)
    name = next(iter(prim_funcs(before)))
    before[name] = before[name].with_attr(mark, True)
    tvm.ir.assert_structural_equal(ScheduleDenseConv()(before), before)


def test_function_without_conv_is_left_alone():
    before = legalized(Elementwise)
    tvm.ir.assert_structural_equal(ScheduleDenseConv()(before), before)


def test_grouped_conv_is_left_alone():
    mod = one_op([("x", (2, 4, 6, 6)), ("w", (4, 2, 3, 3))], lambda x, w: relax.op.nn.conv2d(x, w, groups=2))
    before = legalized(mod)
    tvm.ir.assert_structural_equal(ScheduleDenseConv()(before), before)


def test_function_with_a_second_reduction_is_left_alone():
    x = te.placeholder((2, 3, 6, 6), name="x")
    w = te.placeholder((4, 3, 3, 3), name="w")
    rc, ry, rx = te.reduce_axis((0, 3)), te.reduce_axis((0, 3)), te.reduce_axis((0, 3))
    conv = te.compute((2, 4, 4, 4),
                      lambda n, f, y, z: te.sum(x[n, rc, y + ry, z + rx] * w[f, rc, ry, rx], axis=[rc, ry, rx]),
                      name="conv2d_nchw")
    k = te.reduce_axis((0, 4))
    total = te.compute((2, 4, 4), lambda n, f, y: te.sum(conv[n, f, y, k], axis=k), name="row_sum")
    before = tvm.IRModule({"main": te.create_prim_func([x, w, total])})
    tvm.ir.assert_structural_equal(ScheduleDenseConv()(before), before)


@pytest.mark.parametrize("target", ["arm64", "armv7"])
def test_the_schedules_build_for_the_arm_targets(target):
    """Compiled only (no device here): NEON's 4-lane tiles, every conv scheduled."""
    mod = legalized(_conv_module((4, 6, 8, 8), (10, 6, 1, 1), 2, 0), LegalizeDenseConv())
    after = ScheduleDenseConv(target, threads=1)(mod)
    convs = [f for name, f in prim_funcs(after).items() if "conv" in name]
    assert convs and all("tirx.is_scheduled" in f.attrs for f in convs)
    assert "T.vectorized(T.int64(4))" in "".join(f.script() for f in convs)
    tvm.compile(after, tvm_target(target))
