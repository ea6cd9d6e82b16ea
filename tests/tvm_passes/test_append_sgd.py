"""AppendSGD: the adjoint's gradients update parameters and momenta exactly as torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.append_sgd import AppendSGD
from tvm_passes.errors import CompileError


def _adjoint() -> tvm.IRModule:
    # What Gradient gives for loss = sum(x @ w) + sum(b), inputs named as the training pipeline names them.
    @I.ir_module
    class Adjoint:
        @R.function
        def main_adjoint(x: R.Tensor((3, 4), "float32"), w: R.Tensor((4, 5), "float32"), b: R.Tensor((5,), "float32")):
            R.func_attr({"mest.outputs": ["loss"]})
            with R.dataflow():
                loss = R.add(R.sum(R.matmul(x, w)), R.sum(b))
                gw = R.matmul(R.permute_dims(x), R.ones((3, 5), "float32"))
                gb = R.ones((5,), "float32")
                R.output(loss, gw, gb)
            return ((loss,), (gw, gb))

    func = Adjoint["main_adjoint"]
    names = ["data:x", "param:w", "param:b"]
    params = [relax.Var(n, p.ty) for n, p in zip(names, func.params)]
    bound = func.bind_params(dict(zip(func.params, params)))
    return tvm.IRModule({"main_adjoint": relax.Function(params, bound.body, bound.ret_ty, attrs=func.attrs)
                         .with_attr("global_symbol", "main_adjoint")})


@I.ir_module
class Expected:
    @R.function
    def main_adjoint(x: R.Tensor((3, 4), "float32"), w: R.Tensor((4, 5), "float32"), b: R.Tensor((5,), "float32"),
                     lr: R.Tensor((), "float32"), w_buf: R.Tensor((4, 5), "float32"), b_buf: R.Tensor((5,), "float32")):
        R.func_attr({"mest.outputs": ["loss", "param:w", "param:b", "momentum:w", "momentum:b", "grad:w"]})
        with R.dataflow():
            loss = R.add(R.sum(R.matmul(x, w)), R.sum(b))
            gw = R.matmul(R.permute_dims(x), R.ones((3, 5), "float32"))
            gb = R.ones((5,), "float32")
            w_decay = R.multiply(R.const(1e-4, "float32"), w)
            w_d = R.add(gw, w_decay)
            w_mom = R.multiply(R.const(0.9, "float32"), w_buf)
            w_buf_new = R.add(w_mom, w_d)
            w_step = R.multiply(lr, w_buf_new)
            w_new = R.subtract(w, w_step)
            b_decay = R.multiply(R.const(1e-4, "float32"), b)
            b_d = R.add(gb, b_decay)
            b_mom = R.multiply(R.const(0.9, "float32"), b_buf)
            b_buf_new = R.add(b_mom, b_d)
            b_step = R.multiply(lr, b_buf_new)
            b_new = R.subtract(b, b_step)
            R.output(loss, gw, w_buf_new, w_new, b_buf_new, b_new)
        return (loss, w_new, b_new, w_buf_new, b_buf_new, gw)


def test_sgd_update_is_appended_with_the_learning_rate_an_input():
    tvm.ir.assert_structural_equal(AppendSGD(0.9, 1e-4, keep_grads=("w",))(_adjoint()), Expected)


def test_two_steps_match_torch_optim_sgd():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(AppendSGD(0.9, 1e-4)(_adjoint()), "llvm"), tvm.cpu())
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    optimizer = torch.optim.SGD([tw, tb], lr=0.1, momentum=0.9, weight_decay=1e-4)
    buffers = [np.zeros_like(w), np.zeros_like(b)]  # PyTorch's first step: buffer = gradient
    for lr in (0.1, 0.03):
        args = [x, w, b, np.array(lr, np.float32), *buffers]
        _, w, b, *buffers = (t.numpy() for t in vm["main_adjoint"](*(tvm.runtime.tensor(a) for a in args)))
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        ((torch.from_numpy(x) @ tw).sum() + tb.sum()).backward()
        optimizer.step()
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b, tb.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(buffers[0], optimizer.state[tw]["momentum_buffer"].numpy(), rtol=1e-6, atol=1e-7)


def test_a_function_that_is_not_an_adjoint_is_refused():
    with pytest.raises(CompileError, match="Gradient"):
        AppendSGD(0.9, 0.0)(AppendSGD(0.9, 0.0)(_adjoint()))
