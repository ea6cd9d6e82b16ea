"""FoldBatchNorm: fold an inference-mode batch norm into the convolution before it.

Where it runs: phase 3 of the pipeline, after ``AnnotateSparsity`` and ``BindParams`` (it needs the
weights and BN statistics as constants), before ``KeepDense`` and the lowering passes.

What it does: ``batch_norm(conv(x, W), gamma, beta, mean, var)[0]`` with constant operands and
``training=False`` becomes ``conv(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``,
computed here in float64 and stored as float32 constants. ``conv`` is a plain ``relax.nn.conv2d`` or an
annotated sparse convolution (``mest_<fqn>(x, W, mask)``): scaling whole output filters keeps every
zero a zero, so the mask stays valid and the folded conv keeps its annotation.

What it refuses (leaves unchanged): a batch norm in training mode, on an axis other than the conv's
output channels, after a conv whose layout is not NCHW/OIHW, or with non-constant operands. Those
stay as ``relax.nn.batch_norm`` and are legalized like any other op.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

from .sparse_conv import const_value, conv_of, info_of


def _fold(mod: tvm.IRModule, func: relax.Function) -> relax.Function:
    data, weight, mask = wildcard(), is_const(), is_const()
    plain = is_op("relax.nn.conv2d")(data, weight)
    annotated = wildcard()(data, weight, mask)
    conv = plain | annotated
    gamma, beta, mean, var = is_const(), is_const(), is_const(), is_const()
    bn = is_op("relax.nn.batch_norm")(conv, gamma, beta, mean, var)
    pattern = TupleGetItemPattern(bn, 0)

    def rewriter(expr, matches):
        conv_call = matches[conv]
        bn_call = matches[bn]
        if isinstance(conv_call.op, tvm.ir.GlobalVar):
            if info_of(mod[conv_call.op]) is None:
                return expr
            conv_attrs = conv_of(mod[conv_call.op]).attrs
        else:
            conv_attrs = conv_call.attrs
        if (
            bool(bn_call.attrs.training)
            or int(bn_call.attrs.axis) != 1
            or str(conv_attrs.data_layout) != "NCHW"
            or str(conv_attrs.kernel_layout) != "OIHW"
        ):
            return expr
        w = const_value(matches[weight]).astype(np.float64)
        g, b, mu, v = (const_value(matches[p]).astype(np.float64) for p in (gamma, beta, mean, var))
        scale = g / np.sqrt(v + float(bn_call.attrs.epsilon))
        new_w = relax.const((w * scale.reshape(-1, 1, 1, 1)).astype(np.float32))
        bias = relax.const((b - mu * scale).astype(np.float32).reshape(1, -1, 1, 1))
        args = [conv_call.args[0], new_w, *conv_call.args[2:]]
        return relax.op.add(relax.Call(conv_call.op, args, conv_call.attrs, conv_call.ty_args), bias)

    return rewrite_call(pattern, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="mest.FoldBatchNorm")
class FoldBatchNorm:
    """Fold inference batch norms into the preceding (plain or annotated) convolution."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        out = mod.clone()
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function) and info_of(func) is None:
                out[gvar] = _fold(mod, func)
        return out
