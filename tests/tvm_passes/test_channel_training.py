"""ChannelTraining: channel layers become smaller dense convs; batch norms and consumers read kept channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from schedules.formats import pack
from tvm_passes.channel_training import ChannelTraining, index_values
from tvm_passes.errors import CompileError
from tvm_passes.importer import BatchNormBuffers
from tvm_passes.train_batch_norm import BatchNormSpec, TrainBatchNorm, batch_norm_function

from training_helpers import renamed


@I.ir_module
class Raw:  # conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu, as imported in train mode
    @R.function
    def main(x: R.Tensor((2, 2, 5, 5), "float32"), w1: R.Tensor((4, 2, 3, 3), "float32"), g1: R.Tensor((4,), "float32"),
             b1: R.Tensor((4,), "float32"), w2: R.Tensor((6, 4, 3, 3), "float32"), g2: R.Tensor((6,), "float32"),
             b2: R.Tensor((6,), "float32")):
        with R.dataflow():
            c1 = R.nn.conv2d(x, w1, padding=[1, 1, 1, 1])
            bn1 = R.nn.batch_norm(c1, g1, b1, R.zeros((4,), "float32"), R.ones((4,), "float32"), axis=1, training=True)
            r1 = R.nn.relu(bn1[0])
            c2 = R.nn.conv2d(r1, w2, padding=[1, 1, 1, 1])
            bn2 = R.nn.batch_norm(c2, g2, b2, R.zeros((6,), "float32"), R.ones((6,), "float32"), axis=1, training=True)
            gv = R.nn.relu(bn2[0])
            R.output(gv)
        return gv


@I.ir_module(check_well_formed=False)  # the batch-norm functions are set in the test
class Expected:
    @R.function(private=True)
    def mest_g1_train_compact(x: R.Tensor((2, 3, 5, 5), "float32"), gamma: R.Tensor((4,), "float32"),
                               beta: R.Tensor((4,), "float32"), mean: R.Tensor((4,), "float32"),
                               var: R.Tensor((4,), "float32"), count: R.Tensor((), "int64"),
                               w: R.Tensor((2,), "float32"), gather: R.Tensor((3,), "int32"),
                               scatter: R.Tensor((4,), "int32")):
        return (x, mean, var, count)

    @R.function(private=True)
    def mest_g2_train_compact(x: R.Tensor((2, 3, 5, 5), "float32"), gamma: R.Tensor((6,), "float32"),
                               beta: R.Tensor((6,), "float32"), mean: R.Tensor((6,), "float32"),
                               var: R.Tensor((6,), "float32"), count: R.Tensor((), "int64"),
                               w: R.Tensor((2,), "float32"), gather: R.Tensor((3,), "int32"),
                               scatter: R.Tensor((6,), "int32")):
        return (x, mean, var, count)

    @R.function
    def main(x: R.Tensor((2, 2, 5, 5), "float32"), v1: R.Tensor((54,), "float32"), g1: R.Tensor((4,), "float32"),
             b1: R.Tensor((4,), "float32"), v2: R.Tensor((108,), "float32"), g2: R.Tensor((6,), "float32"),
             b2: R.Tensor((6,), "float32"), m1: R.Tensor((4,), "float32"), s1: R.Tensor((4,), "float32"),
             n1: R.Tensor((), "int64"), m2: R.Tensor((6,), "float32"), s2: R.Tensor((6,), "float32"),
             n2: R.Tensor((), "int64"), w: R.Tensor((2,), "float32"), kept1: R.Tensor((3,), "int32"),
             gather1: R.Tensor((3,), "int32"), scatter1: R.Tensor((4,), "int32"), gather2: R.Tensor((3,), "int32"),
             scatter2: R.Tensor((6,), "int32")):
        R.func_attr({"mest.outputs": ["logits", "stat:bn1.running_mean", "stat:bn1.running_var",
                                      "stat:bn1.num_batches_tracked", "stat:bn2.running_mean", "stat:bn2.running_var",
                                      "stat:bn2.num_batches_tracked"]})
        cls = Expected
        with R.dataflow():
            wc1 = R.reshape(v1, R.shape([3, 2, 3, 3]))  # 2 kept filters + 1 padding slot of 4
            c1 = R.nn.conv2d(x, wc1, padding=[1, 1, 1, 1])
            bn1 = cls.mest_g1_train_compact(c1, g1, b1, m1, s1, n1, w, gather1, scatter1)
            m1_out = bn1[1]
            s1_out = bn1[2]
            n1_out = bn1[3]
            y1 = bn1[0]
            r1 = R.nn.relu(y1)
            wc2 = R.reshape(v2, R.shape([3, 4, 3, 3]))
            ws2 = R.take(wc2, kept1, axis=1, mode="fast")  # conv2 reads only conv1's kept channels
            c2 = R.nn.conv2d(r1, ws2, padding=[1, 1, 1, 1])
            bn2 = cls.mest_g2_train_compact(c2, g2, b2, m2, s2, n2, w, gather2, scatter2)
            m2_out = bn2[1]
            s2_out = bn2[2]
            n2_out = bn2[3]
            y2c = bn2[0]
            zeros = R.zeros(R.shape([2, 1, 5, 5]), "float32")
            both = R.concat((y2c, zeros), axis=1)
            y2 = R.take(both, scatter2, axis=1, mode="fast")  # the output leaves: channels back in place
            gv = R.nn.relu(y2)
            R.output(m1_out, s1_out, n1_out, m2_out, s2_out, n2_out, gv)
        return (gv, m1_out, s1_out, n1_out, m2_out, s2_out, n2_out)


STATS = {f"param:g{i}": BatchNormBuffers(f"bn{i}.running_mean", f"bn{i}.running_var", f"bn{i}.num_batches_tracked")
         for i in (1, 2)}
MASK1 = torch.zeros(4, 2, 3, 3, dtype=torch.bool)
MASK1[[0, 2]] = True
MASK2 = torch.zeros(6, 4, 3, 3, dtype=torch.bool)
MASK2[[1, 4, 5]] = True
FORMATS = {"w1": pack("channel", torch.randn(4, 2, 3, 3), MASK1, capacity=3 * 18),
           "w2": pack("channel", torch.randn(6, 4, 3, 3), MASK2)}


def _before() -> tvm.IRModule:
    names = ["data:x", "param:w1", "param:g1", "param:b1", "param:w2", "param:g2", "param:b2"]
    return TrainBatchNorm(STATS)(renamed(Raw, "main", names))


def test_channel_layers_become_compact_convs_batch_norms_and_sliced_consumers():
    after = ChannelTraining(FORMATS)(_before())
    names = ["data:x", "param:w1", "param:g1", "param:b1", "param:w2", "param:g2", "param:b2",
             *(f"stat:bn{i}.{s}" for i in (1, 2) for s in ("running_mean", "running_var", "num_batches_tracked")),
             "data:example_weights", "index:w1:kept", "index:w1:gather", "index:w1:scatter", "index:w2:gather",
             "index:w2:scatter"]
    expected = renamed(Expected, "main", names)
    for i, channels in ((1, 4), (2, 6)):
        spec = BatchNormSpec((2, 3, 5, 5), channels, 1, 1e-5, 0.1, training=True, compact=True)
        expected[f"mest_g{i}_train_compact"] = batch_norm_function(spec)
    tvm.ir.assert_structural_equal(after, expected)


def test_index_values_map_kept_padding_and_pruned_channels():
    values = index_values(FORMATS["w1"])
    assert values["kept"].tolist() == [0, 2, 0]  # padding slot reads channel 0 (its output is 0)
    assert values["gather"].tolist() == [0, 2, 4]  # padding slot reads gamma = beta = 0
    assert values["scatter"].tolist() == [0, 3, 1, 3]  # pruned channels read the zero slot


def test_compact_batch_norm_updates_every_channels_statistics_as_the_masked_dense_one():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
    w1 = FORMATS["w1"].to_dense()
    gamma, beta = torch.from_numpy(rng.random(4).astype(np.float32)) * MASK1[:, 0, 0, 0], torch.zeros(4)
    mean, var = torch.from_numpy(rng.random(4).astype(np.float32)), torch.ones(4) + 0.5
    spec = BatchNormSpec((2, 3, 5, 5), 4, 1, 1e-5, 0.1, training=True, compact=True)
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"bn": batch_norm_function(spec).with_attr(
        "global_symbol", "bn")}), "llvm"), tvm.cpu())
    compact_x = torch.nn.functional.conv2d(x, FORMATS["w1"].compact_weight(), padding=1)
    index = index_values(FORMATS["w1"])
    args = [compact_x, gamma, beta, mean, var, torch.tensor(0), torch.ones(2)]
    y, new_mean, new_var, count = vm["bn"](*(tvm.runtime.tensor(a.numpy()) for a in args),
                                            tvm.runtime.tensor(index["gather"]), tvm.runtime.tensor(index["scatter"]))
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(gamma), bn.bias.copy_(beta), bn.running_mean.copy_(mean), bn.running_var.copy_(var)
    expected = bn(torch.nn.functional.conv2d(x, w1, padding=1)).detach()
    np.testing.assert_allclose(y.numpy()[:, :2], expected.numpy()[:, [0, 2]], rtol=1e-5, atol=1e-5)
    assert not y.numpy()[:, 2].any()  # the padding slot stays 0
    np.testing.assert_allclose(new_mean.numpy(), bn.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_var.numpy(), bn.running_var.numpy(), rtol=1e-6, atol=1e-7)
    assert int(count.numpy()) == 1


def test_a_channel_conv_without_its_batch_norm_is_refused():
    raw = renamed(Raw, "main", ["data:x", "param:w1", "param:g1", "param:b1", "param:w2", "param:g2", "param:b2"])
    with pytest.raises(CompileError, match="exactly one batch norm"):
        ChannelTraining(FORMATS)(raw)  # TrainBatchNorm has not run: no batch-norm function to swap
