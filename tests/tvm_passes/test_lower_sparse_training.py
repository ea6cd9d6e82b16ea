"""LowerSparseTraining: after Gradient, a sparse layer's three convs become the schedules kernels."""

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
from schedules.kernels import primfunc
from tvm_passes.errors import CompileError
from tvm_passes.kernels import SchedulesKernels
from tvm_passes.lower_sparse_training import LowerSparseTraining
from tvm_passes.sparse_conv import kernel_function

from training_helpers import renamed

RNG = np.random.default_rng(3)
W = torch.from_numpy(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32))
MASK = torch.from_numpy(RNG.random((8, 4, 3, 3)) < 0.2)
FMT = pack("irregular", W, MASK, capacity=int(MASK.sum()) + 6)  # padding slots too
CAP = FMT.capacity
D = {name: str(array.dtype) for name, array in FMT.indices.items()}
L = {name: len(array) for name, array in FMT.indices.items()}


@I.ir_module
class Before:  # what Gradient emits for one conv weight w (stride 1, padding 1), dy standing for dL/dy
    @R.function
    def train_step(x: R.Tensor((2, 4, 6, 6), "float32"), w: R.Tensor((8, 4, 3, 3), "float32"),
                   dy: R.Tensor((2, 8, 6, 6), "float32")):
        with R.dataflow():
            y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            loss = R.sum(R.multiply(y, dy))
            dx = R.nn.conv2d_transpose(dy, w, padding=[1, 1, 1, 1], kernel_layout="IOHW")
            gw = R.nn.conv2d(x, dy, padding=[1, 1, 1, 1], data_layout="CNHW", kernel_layout="IOHW", out_layout="CNHW")
            R.output(loss, dx, gw)
        return ((loss, dx), (gw,))


#: Kernels are named after what shapes their code, and shared by the layers of that structure.
NAMES = {d: f"sparse_irregular_{d}_8x4_cap{CAP}_2x4x6x6_s1_" + "_".join(D[n] for n in FMT.layout[d] if n != "values")
         for d in ("forward", "grad_input", "grad_weight")}

# The expected step, as TVMScript text (the kernel names are data): the three convs call the kernels
# (placeholders here, replaced in the test), the weight is the compact values, the indices are inputs.
EXPECTED = f"""
@I.ir_module(check_well_formed=False)
class Expected:
    @T.prim_func
    def {NAMES["forward"]}(x: T.handle):
        T.evaluate(0)

    @T.prim_func
    def {NAMES["grad_input"]}(x: T.handle):
        T.evaluate(0)

    @T.prim_func
    def {NAMES["grad_weight"]}(x: T.handle):
        T.evaluate(0)

    @R.function
    def train_step(x: R.Tensor((2, 4, 6, 6), "float32"), values: R.Tensor(({CAP},), "float32"),
                   dy: R.Tensor((2, 8, 6, 6), "float32"), row_ptr: R.Tensor(({L["row_ptr"]},), "{D["row_ptr"]}"),
                   positions: R.Tensor(({L["positions"]},), "{D["positions"]}"),
                   t_row_ptr: R.Tensor(({L["t_row_ptr"]},), "{D["t_row_ptr"]}"),
                   t_positions: R.Tensor(({L["t_positions"]},), "{D["t_positions"]}"),
                   t_perm: R.Tensor(({L["t_perm"]},), "{D["t_perm"]}"), valid: R.Tensor(({CAP},), "float32")):
        cls = Expected
        with R.dataflow():
            y = R.call_tir(cls.{NAMES["forward"]}, (x, row_ptr, positions, values),
                           out_ty=R.Tensor((2, 8, 6, 6), "float32"))
            loss = R.sum(R.multiply(y, dy))
            dx = R.call_tir(cls.{NAMES["grad_input"]}, (dy, t_row_ptr, t_positions, t_perm, values),
                            out_ty=R.Tensor((2, 4, 6, 6), "float32"))
            dvalues = R.call_tir(cls.{NAMES["grad_weight"]}, (x, dy, row_ptr, positions),
                                 out_ty=R.Tensor(({CAP},), "float32"))
            gw = R.multiply(dvalues, valid)
            R.output(loss, dx, gw)
        return ((loss, dx), (gw,))
"""


INDEX = ["row_ptr", "positions", "t_row_ptr", "t_positions", "t_perm", "valid"]


def _lowered():
    before = renamed(Before, "train_step", ["data:x", "param:w", "data:dy"])
    return LowerSparseTraining({"w": FMT}, SchedulesKernels("x86"))(before)


def test_three_convs_become_kernels_and_the_weight_its_compact_values():
    after = _lowered()
    parsed = tvm.script.from_source(EXPECTED, extra_vars={"I": I, "R": R, "T": T}, check_well_formed=False)
    expected = renamed(parsed, "train_step", ["data:x", "param:w", "data:dy", *(f"index:w:{n}" for n in INDEX)])
    for direction, name in NAMES.items():
        expected[name] = kernel_function(primfunc(direction, FMT, (2, 4, 6, 6), 1), name, "w", "irregular",
                                         FMT.nbytes, "default knobs")
    tvm.ir.assert_structural_equal(after, expected)


def test_lowered_step_computes_the_masked_convs_and_the_gradient_at_kept_slots():
    x = torch.from_numpy(RNG.standard_normal((2, 4, 6, 6)).astype(np.float32))
    dy = torch.from_numpy(RNG.standard_normal((2, 8, 6, 6)).astype(np.float32))
    vm = relax.VirtualMachine(tvm.compile(_lowered(), "llvm"), tvm.cpu())
    index = [FMT.indices[n] for n in INDEX[:-1]] + [FMT.valid_slots().float().numpy()]
    args = [x.numpy(), FMT.values.numpy(), dy.numpy(), *index]
    (loss, dx), (dvalues,) = vm["train_step"](*(tvm.runtime.tensor(a) for a in args))
    weight = (W * MASK).requires_grad_()
    xg = x.clone().requires_grad_()
    expected_loss = (torch.nn.functional.conv2d(xg, weight, padding=1) * dy).sum()
    expected_loss.backward()
    assert float(loss.numpy()) == pytest.approx(expected_loss.item(), rel=1e-5)
    np.testing.assert_allclose(dx.numpy(), xg.grad.numpy(), rtol=1e-5, atol=1e-5)
    got = FMT.with_values(torch.from_numpy(dvalues.numpy())).to_dense()
    np.testing.assert_allclose(got.numpy(), (weight.grad * MASK).numpy(), rtol=1e-5, atol=1e-5)
    assert not dvalues.numpy()[~FMT.valid_slots().numpy()].any()


def test_a_weight_used_elsewhere_is_refused():
    @I.ir_module
    class Other:
        @R.function
        def train_step(x: R.Tensor((2, 4, 6, 6), "float32"), w: R.Tensor((8, 4, 3, 3), "float32")):
            with R.dataflow():
                y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
                gv = R.add(R.sum(y), R.sum(w))
                R.output(gv)
            return gv

    with pytest.raises(CompileError, match="not only by its convolutions"):
        LowerSparseTraining({"w": FMT}, SchedulesKernels("x86"))(renamed(Other, "train_step", ["data:x", "param:w"]))


def test_a_channel_layer_is_left_to_channel_training():
    with pytest.raises(CompileError, match="ChannelTraining"):
        LowerSparseTraining({"w": pack("channel", W, torch.ones_like(MASK))}, SchedulesKernels("x86"))(
            renamed(Before, "train_step", ["data:x", "param:w", "data:dy"]))
