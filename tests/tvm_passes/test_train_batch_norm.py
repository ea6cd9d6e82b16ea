"""TrainBatchNorm: running statistics as inputs and outputs, PyTorch's update, float64 statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.errors import UnsupportedModelError
from tvm_passes.importer import BatchNormBuffers
from tvm_passes.train_batch_norm import TrainBatchNorm

from training_helpers import CompiledState, build

STATS = {"g": BatchNormBuffers("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")}


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((2, 3, 4, 4), "float32"), g: R.Tensor((3,), "float32"),
             b: R.Tensor((3,), "float32")) -> R.Tensor((2, 3, 4, 4), "float32"):
        with R.dataflow():
            bn = R.nn.batch_norm(x, g, b, R.zeros((3,), "float32"), R.ones((3,), "float32"), axis=1,
                                 epsilon=1e-5, momentum=0.1, training=True)
            gv = R.nn.relu(bn[0])
            R.output(gv)
        return gv


@I.ir_module
class ExpectedTraining:
    @R.function(private=True)
    def mest_g_train(x: R.Tensor((2, 3, 4, 4), "float32"), gamma: R.Tensor((3,), "float32"),
                     beta: R.Tensor((3,), "float32"), mean_in: R.Tensor((3,), "float32"),
                     var_in: R.Tensor((3,), "float32"), count_in: R.Tensor((), "int64"), w: R.Tensor((2,), "float32")):
        R.func_attr({"Composite": "mest.batch_norm", "mest.axis": 1, "mest.compact": False, "mest.epsilon": 1e-5,
                     "mest.momentum": 0.1, "mest.training": True})
        with R.dataflow():
            w4 = R.reshape(w, R.shape([2, 1, 1, 1]))
            w64 = R.astype(w, "float64")
            examples = R.sum(w64, axis=None, keepdims=False)
            count = R.multiply(examples, R.const(16.0, "float64"))  # weighted N * H * W
            xw = R.multiply(x, w4)
            xw64 = R.astype(xw, "float64")
            total = R.sum(xw64, axis=[0, 2, 3], keepdims=False)
            mean = R.divide(total, count)
            mean4 = R.reshape(mean, R.shape([1, 3, 1, 1]))
            mean_b = R.astype(R.broadcast_to(mean4, R.shape([2, 3, 4, 4])), "float32")
            centered = R.subtract(x, mean_b)
            sq = R.multiply(centered, centered)
            sqw = R.multiply(sq, w4)
            sqw64 = R.astype(sqw, "float64")
            sq_total = R.sum(sqw64, axis=[0, 2, 3], keepdims=False)
            var = R.divide(sq_total, count)
            var_eps = R.add(var, R.const(1e-5, "float64"))
            std = R.sqrt(var_eps)
            inv_std = R.divide(R.const(1.0, "float64"), std)
            g64 = R.astype(gamma, "float64")
            scale = R.multiply(g64, inv_std)
            scale4 = R.reshape(scale, R.shape([1, 3, 1, 1]))
            scale_b = R.astype(R.broadcast_to(scale4, R.shape([2, 3, 4, 4])), "float32")
            scaled = R.multiply(centered, scale_b)
            b64 = R.astype(beta, "float64")
            b4 = R.reshape(b64, R.shape([1, 3, 1, 1]))
            b_b = R.astype(R.broadcast_to(b4, R.shape([2, 3, 4, 4])), "float32")
            y = R.add(scaled, b_b)
            count_1 = R.subtract(count, R.const(1.0, "float64"))
            bessel = R.divide(count, count_1)
            unbiased = R.multiply(var, bessel)
            mean_in64 = R.astype(mean_in, "float64")
            mean_old = R.multiply(R.const(0.9, "float64"), mean_in64)
            mean_new = R.multiply(R.const(0.1, "float64"), mean)
            mean_out = R.astype(R.add(mean_old, mean_new), "float32")
            var_in64 = R.astype(var_in, "float64")
            var_old = R.multiply(R.const(0.9, "float64"), var_in64)
            var_new = R.multiply(R.const(0.1, "float64"), unbiased)
            var_out = R.astype(R.add(var_old, var_new), "float32")
            count_out = R.add(count_in, R.const(1, "int64"))
            gv = (y, mean_out, var_out, count_out)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((2, 3, 4, 4), "float32"), g: R.Tensor((3,), "float32"), b: R.Tensor((3,), "float32"),
             mean_in: R.Tensor((3,), "float32"), var_in: R.Tensor((3,), "float32"), count_in: R.Tensor((), "int64"),
             w: R.Tensor((2,), "float32")):
        R.func_attr({"mest.outputs": ["logits", "stat:bn.running_mean", "stat:bn.running_var",
                                      "stat:bn.num_batches_tracked"]})
        cls = ExpectedTraining
        with R.dataflow():
            bn = cls.mest_g_train(x, g, b, mean_in, var_in, count_in, w)
            mean_out = bn[1]
            var_out = bn[2]
            count_out = bn[3]
            y = bn[0]
            gv = R.nn.relu(y)
            R.output(mean_out, var_out, count_out, gv)
        return (gv, mean_out, var_out, count_out)


@I.ir_module
class ExpectedEvaluation:
    @R.function(private=True)
    def mest_g_eval(x: R.Tensor((2, 3, 4, 4), "float32"), gamma: R.Tensor((3,), "float32"),
                    beta: R.Tensor((3,), "float32"), mean_in: R.Tensor((3,), "float32"),
                    var_in: R.Tensor((3,), "float32")):
        R.func_attr({"Composite": "mest.batch_norm", "mest.axis": 1, "mest.compact": False, "mest.epsilon": 1e-5,
                     "mest.momentum": 0.1, "mest.training": False})
        with R.dataflow():
            var_eps = R.add(var_in, R.const(1e-5, "float32"))
            std = R.sqrt(var_eps)
            scale = R.divide(gamma, std)
            shifted = R.multiply(mean_in, scale)
            shift = R.subtract(beta, shifted)
            scale4 = R.reshape(scale, R.shape([1, 3, 1, 1]))
            scaled = R.multiply(x, scale4)
            shift4 = R.reshape(shift, R.shape([1, 3, 1, 1]))
            y = R.add(scaled, shift4)
            R.output(y)
        return y

    @R.function
    def main(x: R.Tensor((2, 3, 4, 4), "float32"), g: R.Tensor((3,), "float32"), b: R.Tensor((3,), "float32"),
             mean_in: R.Tensor((3,), "float32"), var_in: R.Tensor((3,), "float32")):
        R.func_attr({"mest.outputs": ["logits"]})
        cls = ExpectedEvaluation
        with R.dataflow():
            y = cls.mest_g_eval(x, g, b, mean_in, var_in)
            gv = R.nn.relu(y)
            R.output(gv)
        return (gv,)


def test_training_form_is_the_float64_decomposition_with_statistics_in_and_out():
    tvm.ir.assert_structural_equal(TrainBatchNorm(STATS)(Before), ExpectedTraining)


def test_evaluation_form_normalises_with_the_running_statistics():
    tvm.ir.assert_structural_equal(TrainBatchNorm(STATS, training=False)(Before), ExpectedEvaluation)


def test_a_batch_norm_without_known_statistics_is_refused():
    with pytest.raises(UnsupportedModelError, match="running statistics"):
        TrainBatchNorm({})(Before)

class _ConvBatchNorm(torch.nn.Module):
    """conv -> BN -> ReLU -> pool -> linear: the smallest model whose gradients cross a batch norm."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        out = torch.relu(self.bn(self.conv(x)))
        return self.linear(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def _gradients(model, x, labels, dtype):
    model = copy.deepcopy(model).to(dtype)
    torch.nn.functional.cross_entropy(model(x.to(dtype)), labels).backward()
    return {name: p.grad.double().numpy() for name, p in model.named_parameters()}


def test_gradients_through_batch_norm_are_as_exact_as_pytorchs():
    # Inputs far from zero mean over many values (16 x 24 x 24 per channel): a float32 sum of them,
    # as TOPI's reductions do it, loses the digits that the gradient through the batch mean needs;
    # PyTorch's CPU batch norm accumulates in float64, and so does TrainBatchNorm.
    torch.manual_seed(0)
    model = _ConvBatchNorm()
    shape = (16, 1, 24, 24)
    x = 30.0 + torch.randn(shape)
    labels = torch.randint(0, 3, (shape[0],))
    compiled = CompiledState(build(model, {}, shape, weight_decay=0.0), model, {})
    out = compiled.run(x, labels)  # zero momentum in, no weight decay: momentum out = gradient
    exact = _gradients(model, x, labels, torch.float64)
    pytorch = _gradients(model, x, labels, torch.float32)
    for name, expected in exact.items():
        scale = np.abs(expected).max()
        error = np.abs(out[f"momentum:{name}"] - expected).max() / scale
        torch_error = np.abs(pytorch[name] - expected).max() / scale
        if name == "conv.weight":  # a float32 reduction of x * dY over 9216 values, in TVM and in oneDNN
            assert error < 4 * torch_error, f"{name}: {error:.1e} from float64, PyTorch float32 {torch_error:.1e}"
        else:  # float32 batch-norm sums put these at ~8e-6; float64 ones at PyTorch's ~3e-7
            assert torch_error < 1e-6 and error < 1e-6, f"{name}: {error:.1e} from float64, PyTorch {torch_error:.1e}"
