"""WideWeightGradients: the dense convs' weight gradients accumulate in float64, as PyTorch's are accurate.

Where it runs: phase 6 of :func:`tvm_passes.training_pipeline.build_training_step`, after ``Gradient``
and ``LowerSparseTraining`` (the sparse layers' grad-weight convs are kernels by then), before the
optimizer is appended.

Why: a dense conv's weight gradient is a sum over ``N*H*W`` products ``x * dY`` whose terms cancel (it
is the small difference of large ones); TOPI's float32 reduction sums them serially and loses digits
that oneDNN's blocked accumulation keeps (measured: ~2e-5 relative on the tiny model's stem at batch 8,
~1e-7 in PyTorch), and some training states are sensitive enough to that (a stem filter feeding a batch
norm of small variance) that the trajectory leaves PyTorch's within one window.

What it does: every ``relax.nn.conv2d`` with ``data_layout="CNHW"`` (the grad-weight conv ``Gradient``
emits) gets ``out_dtype="float64"`` (TOPI casts the float32 operands inside the reduction: no float64
copy of ``x`` or ``dY`` is made) and its result is cast back to float32, before the ``strided_slice``
that may follow.

What it refuses: nothing; convs with another data layout are left alone.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _Widener(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"
                and call.attrs.data_layout == "CNHW" and str(call.ty.dtype) == "float32"):
            return call
        attrs = call.attrs
        wide = relax.op.nn.conv2d(call.args[0], call.args[1], strides=attrs.strides, padding=attrs.padding,
                                  dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                  kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                  out_dtype="float64")
        return relax.op.astype(self.builder_.emit(wide), "float32")


@tvm.transform.module_pass(opt_level=0, name="mest.WideWeightGradients")
class WideWeightGradients:
    """Accumulate the dense grad-weight convs of ``func_name`` in float64 (see the module docstring).

    Parameters
    ----------
    func_name : str
        The function to rewrite.
    """

    def __init__(self, func_name: str = "train_step"):
        self.func_name = func_name

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        widener = _Widener(mod.clone())  # the block builder adds to its module in place
        func = widener.visit_expr(mod[self.func_name])
        out = widener.builder_.get()
        out[self.func_name] = func
        return out
