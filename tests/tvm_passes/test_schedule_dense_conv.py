"""ScheduleDenseConv: unscheduled legalized convs get the default schedule; everything else is left alone."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax, tirx
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.schedule_dense_conv import ScheduleDenseConv


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


def _legalized(mod):
    return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                     relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)


def _prim_funcs(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_conv_is_scheduled_and_computes_the_same():
    before = _legalized(ConvBlock)
    after = ScheduleDenseConv()(before)
    funcs = _prim_funcs(after)
    assert len(funcs) == 1 and "tir.is_scheduled" in next(iter(funcs.values())).attrs
    tvm.ir.assert_structural_equal(after["main"], before["main"])  # the Relax side is unchanged
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 8, 8, 8), (12, 8, 3, 3), (1, 12, 1, 1)))
    vm = relax.VirtualMachine(tvm.compile(after, "llvm"), tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(a) for a in (x, w, b))).numpy()
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1)
                     + torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_already_scheduled_function_is_left_alone():
    before = _legalized(ConvBlock)
    name = next(iter(_prim_funcs(before)))
    before[name] = before[name].with_attr("tir.is_scheduled", True)
    tvm.ir.assert_structural_equal(ScheduleDenseConv()(before), before)


def test_function_without_conv_is_left_alone():
    before = _legalized(Elementwise)
    tvm.ir.assert_structural_equal(ScheduleDenseConv()(before), before)
