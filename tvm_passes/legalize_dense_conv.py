"""LegalizeDenseConv: the dense convolutions of a training step become TE computes that tile well.

Where it runs: after ``Gradient`` (and after any pass that lowers sparse layers to kernels), before
``LegalizeOps``; ``AnnotateTIROpPattern``/``FuseOps``/``FuseTIR`` then fuse the element-wise ops around
them as they would TOPI's, and :class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv` schedules
the result. TOPI's own legalizations are naive loop nests that ``ScheduleDenseConv`` does not take
except for the forward ``conv2d_nchw``: its ``conv2d_transpose`` convolves the zero-dilated ``dy``
(3 of 4 products with an inserted zero at stride 2) and its ``CNHW`` conv strides along the image.

What it does (computations in :mod:`tvm_passes.dense_conv_te`), for float32 calls of static shape
with ``groups == 1``:

- ``relax.nn.conv2d`` NCHW / OIHW / NCHW, dilation 1: the forward conv over a phase-split padded
  input (contiguous loads at any stride);
- ``relax.nn.conv2d_transpose`` NCHW / IOHW / NCHW, dilation 1 (the grad-input ``Gradient`` emits):
  one stride-1 conv per output residue class over the padded ``dy``, interleaved;
- ``relax.nn.conv2d`` CNHW / IOHW / CNHW, strides 1 (the grad-weight ``Gradient`` emits, the forward
  stride as its dilation): a reduction over batch and output pixels. When the conv's spatial size
  exceeds the kernel (a stride-2 forward on an even input: a 1x1 kernel gets a 2x2 gradient conv)
  ``Gradient`` slices its leading ``kernel`` taps off; such a ``strided_slice`` becomes the compute of
  those taps alone; the larger conv's binding and PrimFunc, now unused, are removed (with any other
  unused dataflow binding; no other function).

What it refuses (leaves the call to ``LegalizeOps``): other layouts, grouped or dilated convs (a
dilated forward conv, or a strided grad-weight conv, i.e. of a dilated forward), other dtypes,
``out_dtype`` other than the input's, symbolic shapes, and every other operator.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from . import dense_conv_te

_CONV2D = "relax.nn.conv2d"
_CONV2D_TRANSPOSE = "relax.nn.conv2d_transpose"
_STRIDED_SLICE = "relax.strided_slice"


def _static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values):
        return None
    return tuple(int(d) for d in ty.shape.values)


def _layouts(attrs) -> tuple[str, str, str]:
    return str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)


def _pair(values) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def _padding(attrs) -> tuple[int, int, int, int]:
    top, left, bottom, right = (int(v) for v in attrs.padding)
    return top, left, bottom, right


def _accepts(call: relax.Call) -> str | None:
    """Which of the three convolutions ``call`` is (``"forward"``, ``"grad_input"``, ``"grad_weight"``), or None."""
    if not isinstance(call.op, tvm.ir.Op) or call.op.name not in (_CONV2D, _CONV2D_TRANSPOSE):
        return None
    shapes = [_static_shape(arg) for arg in call.args] + [_static_shape(call)]
    if any(shape is None or len(shape) != 4 for shape in shapes):
        return None
    if any(arg.ty.dtype != "float32" for arg in call.args) or call.ty.dtype != "float32":
        return None
    attrs = call.attrs
    if int(attrs.groups) != 1:
        return None
    if call.op.name == _CONV2D_TRANSPOSE:
        if _layouts(attrs) == ("NCHW", "IOHW", "NCHW") and _pair(attrs.dilation) == (1, 1):
            return "grad_input"
        return None
    if _layouts(attrs) == ("NCHW", "OIHW", "NCHW") and _pair(attrs.dilation) == (1, 1):
        return "forward"
    if _layouts(attrs) == ("CNHW", "IOHW", "CNHW") and _pair(attrs.strides) == (1, 1):
        return "grad_weight"
    return None


def _ints(tuple_expr) -> tuple[int, ...]:
    return tuple(int(v.value) for v in tuple_expr.fields)


@mutator
class _Legalizer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.grad_weights: dict = {}  # grad-weight PrimFunc -> (dilation, padding) it was made with

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == _STRIDED_SLICE:
            return self._leading_taps(call)
        kind = _accepts(call)
        if kind is None:
            return call
        attrs, (a, b) = call.attrs, call.args
        if kind == "forward":
            return self.builder_.call_te(dense_conv_te.conv2d_forward, a, b, _pair(attrs.strides), _padding(attrs),
                                         primfunc_name_hint="dense_conv2d")
        if kind == "grad_input":
            out_size = _static_shape(call)[2:]
            return self.builder_.call_te(dense_conv_te.conv2d_grad_input, a, b, _pair(attrs.strides), _padding(attrs),
                                         out_size, primfunc_name_hint="dense_conv2d_grad_input")
        return self._grad_weight(a, b, _pair(attrs.dilation), _padding(attrs), _static_shape(call)[2:])

    def _grad_weight(self, x, dy, dilation, padding, kernel):
        out = self.builder_.call_te(dense_conv_te.conv2d_grad_weight, x, dy, dilation, padding, kernel,
                                    primfunc_name_hint="dense_conv2d_grad_weight")
        self.grad_weights[out.args[0]] = (dilation, padding)
        return out

    def _leading_taps(self, call):
        """``strided_slice(grad_weight, [0:F, 0:C, 0:kh, 0:kw])`` as the grad-weight of those taps."""
        source = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if len(call.args) != 4 or source is None or source.op != tvm.ir.Op.get("relax.call_tir"):
            return call
        made = self.grad_weights.get(source.args[0])
        if made is None:
            return call
        full = _static_shape(call.args[0])
        axes, begin, end = (_ints(arg) for arg in call.args[1:])
        stop = list(full)
        for axis, first, last in zip(axes, begin, end):
            if first != 0:
                return call
            stop[axis] = min(last, full[axis])
        if stop[:2] != list(full[:2]):
            return call
        x, dy = source.args[1].fields
        return self._grad_weight(x, dy, *made, tuple(stop[2:]))


@tvm.transform.module_pass(opt_level=0, name="mest.LegalizeDenseConv")
class LegalizeDenseConv:
    """Legalize the dense convolutions of a training step (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass to every Relax function of ``mod`` (see the module docstring)."""
        legalizer = _Legalizer(mod)
        functions = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                functions[gvar] = relax.analysis.remove_all_unused(legalizer.visit_expr(func))
        out = legalizer.builder_.get()
        for gvar, func in functions.items():
            out[gvar] = func
        used = {gv.name_hint for func in functions.values() for gv in relax.analysis.all_global_vars(func)}
        for gvar in legalizer.grad_weights:
            if gvar.name_hint not in used:  # a grad-weight conv whose slice became the compute of its taps
                del out[gvar]
        return out
