"""ChannelCompaction: kept filters only; the consumer reads only kept channels, or they are put back."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.channel_compaction import ChannelCompaction

RNG = np.random.default_rng(1)
KEPT = np.array([0, 2])
W1 = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
MASK1 = np.zeros((4, 4, 3, 3), dtype=bool)
MASK1[KEPT] = True
W2 = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
BIAS_ZERO_AT_PRUNED = np.array([0.5, 0.0, -0.25, 0.0], dtype=np.float32).reshape(1, 4, 1, 1)
BIAS_NONZERO_AT_PRUNED = np.array([0.5, 0.75, -0.25, 0.0], dtype=np.float32).reshape(1, 4, 1, 1)


@I.ir_module
class Before:
    @R.function(private=True)
    def mest_conv1(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
                   mask: R.Tensor((4, 4, 3, 3), "bool")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"Composite": "mest.sparse_conv2d", "mest.fqn": "conv1.weight", "mest.scheme": "channel",
                     "mest.density": 0.5, "mest.kernel": "channel"})
        with R.dataflow():
            lv = R.multiply(w, R.astype(mask, "float32"))
            gv = R.nn.conv2d(x, lv, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w1: R.Tensor((4, 4, 3, 3), "float32"),
             m1: R.Tensor((4, 4, 3, 3), "bool"), b1: R.Tensor((1, 4, 1, 1), "float32"),
             w2: R.Tensor((4, 4, 3, 3), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = Before
        with R.dataflow():
            lv = cls.mest_conv1(x, w1, m1)
            lv1 = R.add(lv, b1)
            lv2 = R.nn.relu(lv1)
            gv = R.nn.conv2d(lv2, w2, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv


@I.ir_module
class ExpectedSliced:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), wk: R.Tensor((2, 4, 3, 3), "float32"),
             bk: R.Tensor((1, 2, 1, 1), "float32"), w2k: R.Tensor((4, 2, 3, 3), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            lv = R.nn.conv2d(x, wk, padding=[1, 1, 1, 1], out_dtype="float32")
            lv1 = R.add(lv, bk)
            lv2 = R.nn.relu(lv1)
            gv = R.nn.conv2d(lv2, w2k, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv


@I.ir_module
class ExpectedExpanded:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), wk: R.Tensor((2, 4, 3, 3), "float32"),
             index: R.Tensor((4,), "int32"), b1: R.Tensor((1, 4, 1, 1), "float32"),
             w2: R.Tensor((4, 4, 3, 3), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, wk, padding=[1, 1, 1, 1], out_dtype="float32")
            zeros = R.zeros(R.shape([1, 1, 8, 8]), dtype="float32")
            both = R.concat((y, zeros), axis=1)
            lv = R.take(both, index, axis=1, mode="fast")
            lv1 = R.add(lv, b1)
            lv2 = R.nn.relu(lv1)
            gv = R.nn.conv2d(lv2, w2, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv


def _bind(mod, **values):
    return relax.transform.BindParams("main", values)(mod)


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_consumer_reads_only_kept_channels_when_pruned_ones_are_zero():
    before = _bind(Before, w1=W1, m1=MASK1, b1=BIAS_ZERO_AT_PRUNED, w2=W2)
    after = ChannelCompaction()(before)
    expected = _bind(ExpectedSliced, wk=W1[KEPT], bk=BIAS_ZERO_AT_PRUNED[:, KEPT], w2k=W2[:, KEPT])
    tvm.ir.assert_structural_equal(after, expected)
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=1e-5, atol=1e-5)


def test_channels_are_put_back_when_a_pruned_channel_is_not_zero():
    before = _bind(Before, w1=W1, m1=MASK1, b1=BIAS_NONZERO_AT_PRUNED, w2=W2)
    after = ChannelCompaction()(before)
    index = np.array([0, 2, 1, 2], dtype=np.int32)  # pruned channels read the zero channel (2)
    expected = _bind(ExpectedExpanded, wk=W1[KEPT], index=index, b1=BIAS_NONZERO_AT_PRUNED, w2=W2)
    tvm.ir.assert_structural_equal(after, expected)
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=1e-5, atol=1e-5)
