"""ReluSubgradient: ReLUs become maximum(0, x), whose Relax gradient is PyTorch's at x == 0."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.relu_subgradient import ReluSubgradient


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((6,), "float32")) -> R.Tensor((), "float32"):
        with R.dataflow():
            y = R.nn.relu(x)
            gv = R.sum(R.multiply(y, R.const(np.arange(1, 7, dtype=np.float32))))
            R.output(gv)
        return gv


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((6,), "float32")) -> R.Tensor((), "float32"):
        with R.dataflow():
            y = R.maximum(R.const(0, "float32"), x)
            gv = R.sum(R.multiply(y, R.const(np.arange(1, 7, dtype=np.float32))))
            R.output(gv)
        return gv


def test_relu_becomes_maximum_of_zero_and_x():
    tvm.ir.assert_structural_equal(ReluSubgradient()(Before), Expected)


def test_gradient_at_zero_is_pytorchs():
    x = np.array([-1.0, 0.0, 2.0, 0.0, -0.0, 3.0], np.float32)
    expected = torch.from_numpy(x).requires_grad_()
    (torch.relu(expected) * torch.arange(1, 7)).sum().backward()
    for mod, passes_at_zero in ((Before, True), (ReluSubgradient()(Before), False)):
        adjoint = relax.transform.Gradient("main")(mod)
        vm = relax.VirtualMachine(tvm.compile(adjoint, "llvm"), tvm.cpu())
        _, (grad,) = vm["main_adjoint"](tvm.runtime.tensor(x))
        assert np.array_equal(grad.numpy(), expected.grad.numpy()) != passes_at_zero  # Relax's own rule differs
