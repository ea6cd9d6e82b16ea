"""AnnotateSparsity: masked convs, found by FQN, become annotated calls carrying their mask."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.annotate import AnnotateSparsity, LayerMask
from tvm_passes.errors import MaskError

MASK = np.zeros((4, 4, 3, 3), dtype=bool)
MASK[:, :, 1, :] = True  # the middle row of every kernel: density 1/3
PARAM_FQNS = {"p_layer1_conv_weight": "layer1.conv.weight", "p_head_weight": "head.weight"}


@I.ir_module
class Before:
    @R.function
    def main(
        x: R.Tensor((1, 4, 8, 8), "float32"),
        p_layer1_conv_weight: R.Tensor((4, 4, 3, 3), "float32"),
        p_head_weight: R.Tensor((4, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            lv = R.nn.conv2d(x, p_layer1_conv_weight, padding=[1, 1, 1, 1], out_dtype="float32")
            lv1 = R.nn.relu(lv)
            gv = R.nn.conv2d(lv1, p_head_weight, out_dtype="float32")
            R.output(gv)
        return gv


@I.ir_module
class Expected:
    @R.function(private=True)
    def mest_layer1_conv(
        x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"), mask: R.Tensor((4, 4, 3, 3), "bool")
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr(
            {
                "Composite": "mest.sparse_conv2d",
                "mest.fqn": "layer1.conv.weight",
                "mest.scheme": "irregular",
                "mest.density": 1.0 / 3.0,
                "mest.kernel": "irregular",
            }
        )
        with R.dataflow():
            lv = R.multiply(w, R.astype(mask, "float32"))
            gv = R.nn.conv2d(x, lv, padding=[1, 1, 1, 1], out_dtype="float32")
            R.output(gv)
        return gv

    @R.function
    def main(
        x: R.Tensor((1, 4, 8, 8), "float32"),
        p_layer1_conv_weight: R.Tensor((4, 4, 3, 3), "float32"),
        p_head_weight: R.Tensor((4, 4, 1, 1), "float32"),
        mask: R.Tensor((4, 4, 3, 3), "bool"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = Expected
        with R.dataflow():
            lv = cls.mest_layer1_conv(x, p_layer1_conv_weight, mask)
            lv1 = R.nn.relu(lv)
            gv = R.nn.conv2d(lv1, p_head_weight, out_dtype="float32")
            R.output(gv)
        return gv


def _expected_with_mask_constant() -> tvm.IRModule:
    return relax.transform.BindParams("main", {"mask": MASK})(Expected)


def test_masked_conv_is_annotated_by_fqn():
    after = AnnotateSparsity({"layer1.conv.weight": LayerMask("irregular", MASK)}, PARAM_FQNS)(Before)
    # the density attribute is rounded to 6 digits by the pass
    expected = _expected_with_mask_constant()
    func = expected["mest_layer1_conv"].with_attr("mest.density", round(1.0 / 3.0, 6))
    expected["mest_layer1_conv"] = func
    tvm.ir.assert_structural_equal(after, expected)


def test_no_mask_leaves_the_module_alone():
    tvm.ir.assert_structural_equal(AnnotateSparsity({}, PARAM_FQNS)(Before), Before)


@pytest.mark.parametrize(
    "layers, text",
    [
        ({"layer9.conv.weight": LayerMask("irregular", MASK)}, "names no parameter"),
        ({"layer1.conv.weight": LayerMask("irregular", MASK[:2])}, "expected bool[4, 4, 3, 3]"),
        ({"layer1.conv.weight": LayerMask("diagonal", MASK)}, "unknown scheme 'diagonal'"),
    ],
)
def test_bad_masks_are_refused(layers, text):
    with pytest.raises(MaskError, match=re.escape(text)):
        AnnotateSparsity(layers, PARAM_FQNS)(Before)
