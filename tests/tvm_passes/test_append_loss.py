"""AppendCrossEntropy: logits become the weighted mean cross entropy and per-example correctness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.append_loss import AppendCrossEntropy
from tvm_passes.errors import CompileError


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((3, 4), "float32"), w: R.Tensor((4, 5), "float32")) -> R.Tensor((3, 5), "float32"):
        with R.dataflow():
            gv = R.matmul(x, w)
            R.output(gv)
        return gv


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((3, 4), "float32"), w: R.Tensor((4, 5), "float32"),
             weights: R.Tensor((3,), "float32"), labels: R.Tensor((3,), "int64")):
        R.func_attr({"mest.outputs": ["loss", "correct"]})
        with R.dataflow():
            logits = R.matmul(x, w)
            log_p = R.nn.log_softmax(logits, axis=1)
            nll = R.nn.nll_loss(log_p, labels, reduction="none")
            weighted = R.multiply(nll, weights)
            total = R.sum(weighted)
            count = R.sum(weights)
            loss = R.divide(total, count)
            predicted = R.argmax(logits, axis=1)
            correct = R.equal(predicted, labels)
            R.output(loss, correct)
        return (loss, correct)


def test_logits_become_loss_and_correctness():
    tvm.ir.assert_structural_equal(AppendCrossEntropy()(Before), Expected)


def test_loss_is_pytorchs_mean_cross_entropy_over_the_weighted_examples():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    labels = np.array([1, 4, 0])
    vm = relax.VirtualMachine(tvm.compile(AppendCrossEntropy()(Before), "llvm"), tvm.cpu())
    weights = np.array([1, 1, 0], np.float32)  # the third example is padding
    loss, correct = vm["main"](*(tvm.runtime.tensor(a) for a in (x, w, weights, labels)))
    logits = torch.from_numpy(x @ w)
    expected = torch.nn.functional.cross_entropy(logits[:2], torch.from_numpy(labels[:2]))
    assert float(loss.numpy()) == pytest.approx(expected.item(), rel=1e-6)
    assert np.array_equal(correct.numpy(), (logits.argmax(1) == torch.from_numpy(labels)).numpy())


def test_a_function_without_logits_is_refused():
    with pytest.raises(CompileError, match="no logits"):
        AppendCrossEntropy()(AppendCrossEntropy()(Before))
