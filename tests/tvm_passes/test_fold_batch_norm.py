"""FoldBatchNorm: inference batch norms disappear into the plain or annotated conv before them."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.fold_batch_norm import FoldBatchNorm

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
GAMMA, BETA, MEAN = (RNG.standard_normal(4).astype(np.float32) for _ in range(3))
VAR = RNG.uniform(0.5, 2.0, 4).astype(np.float32)
MASK = RNG.random((4, 4, 3, 3)) < 0.3
EPS = 1e-5


def _folded():
    scale = GAMMA.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + EPS)
    weight = (W * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
    bias = (BETA - MEAN * scale).astype(np.float32).reshape(1, 4, 1, 1)
    return weight, bias


def _bind(mod, **values):
    return relax.transform.BindParams("main", values)(mod)


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
             gamma: R.Tensor((4,), "float32"), beta: R.Tensor((4,), "float32"),
             mean: R.Tensor((4,), "float32"), var: R.Tensor((4,), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            lv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], out_dtype="float32")
            lv1 = R.nn.batch_norm(lv, gamma, beta, mean, var, axis=1, epsilon=EPS, training=False)
            lv2 = lv1[0]
            gv = R.nn.relu(lv2)
            R.output(gv)
        return gv


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
             b: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            lv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], out_dtype="float32")
            lv2 = R.add(lv, b)
            gv = R.nn.relu(lv2)
            R.output(gv)
        return gv


@I.ir_module
class BeforeAnnotated:
    @R.function(private=True)
    def mest_conv(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
                  mask: R.Tensor((4, 4, 3, 3), "bool")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"Composite": "mest.sparse_conv2d", "mest.fqn": "conv.weight", "mest.scheme": "irregular",
                     "mest.density": 0.25, "mest.kernel": "irregular"})
        with R.dataflow():
            lv = R.multiply(w, R.astype(mask, "float32"))
            gv = R.nn.conv2d(x, lv, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
             mask: R.Tensor((4, 4, 3, 3), "bool"), gamma: R.Tensor((4,), "float32"), beta: R.Tensor((4,), "float32"),
             mean: R.Tensor((4,), "float32"), var: R.Tensor((4,), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = BeforeAnnotated
        with R.dataflow():
            lv = cls.mest_conv(x, w, mask)
            lv1 = R.nn.batch_norm(lv, gamma, beta, mean, var, axis=1, epsilon=EPS, training=False)
            gv = lv1[0]
            R.output(gv)
        return gv


@I.ir_module
class ExpectedAnnotated:
    @R.function(private=True)
    def mest_conv(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
                  mask: R.Tensor((4, 4, 3, 3), "bool")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"Composite": "mest.sparse_conv2d", "mest.fqn": "conv.weight", "mest.scheme": "irregular",
                     "mest.density": 0.25, "mest.kernel": "irregular"})
        with R.dataflow():
            lv = R.multiply(w, R.astype(mask, "float32"))
            gv = R.nn.conv2d(x, lv, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
             mask: R.Tensor((4, 4, 3, 3), "bool"), b: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = ExpectedAnnotated
        with R.dataflow():
            lv = cls.mest_conv(x, w, mask)
            gv = R.add(lv, b)
            R.output(gv)
        return gv


def test_batch_norm_folds_into_plain_conv():
    after = FoldBatchNorm()(_bind(Before, w=W, gamma=GAMMA, beta=BETA, mean=MEAN, var=VAR))
    weight, bias = _folded()
    tvm.ir.assert_structural_equal(after, _bind(Expected, w=weight, b=bias))


def test_batch_norm_folds_into_annotated_conv_keeping_mask_and_annotation():
    before = _bind(BeforeAnnotated, w=W, mask=MASK, gamma=GAMMA, beta=BETA, mean=MEAN, var=VAR)
    weight, bias = _folded()
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), _bind(ExpectedAnnotated, w=weight, mask=MASK, b=bias))


def test_batch_norm_with_non_constant_statistics_stays():
    before = _bind(Before, w=W, gamma=GAMMA, beta=BETA, mean=MEAN)  # var stays an input
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), before)


def test_folded_module_computes_the_same():
    before = _bind(Before, w=W, gamma=GAMMA, beta=BETA, mean=MEAN, var=VAR)
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    outputs = []
    for mod in (before, FoldBatchNorm()(before)):
        vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_training_mode_batch_norm_stays():
    training = Before.script().replace("training=False", "training=True")
    before = _bind(tvm.script.from_source(training), w=W, gamma=GAMMA, beta=BETA, mean=MEAN, var=VAR)
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), before)
