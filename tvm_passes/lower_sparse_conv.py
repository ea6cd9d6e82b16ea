"""LowerSparseConv: annotated convolutions become ``R.call_tir`` of their scheme's sparse kernel.

Where it runs: phase 5 of the pipeline, after ``KeepDense`` and ``ChannelCompaction`` and before
``LegalizeOps``/``FuseOps`` (the kernels are already scheduled PrimFuncs, marked opaque so that fusion
leaves them alone).

What it does, for each call ``mest_<fqn>(x, W, mask)`` of an annotated convolution with constant
``W`` and ``mask``:

- ``mest.kernel`` irregular / block / pattern: the weight is packed into the scheme's compact format
  (:func:`schedules.formats.pack`), the kernel source gives the scheduled forward PrimFunc for that
  format, input shape and stride (tuned knobs from the tuning database where it has them), and the call
  becomes ``R.call_tir(kernel, (x, *format buffers as constants), out)``. The PrimFunc is added to the
  module as ``sparse_<scheme>_<fqn>`` with attributes ``mest.fqn``, ``mest.scheme``, ``mest.kernel``,
  ``mest.bytes_stored`` and ``mest.knobs`` for the report;
- ``mest.kernel == "dense"``: the call becomes ``relax.nn.conv2d(x, W * mask)``, an ordinary dense
  conv for the rest of the pipeline.

What it refuses: an annotated conv still marked ``"channel"`` (``ChannelCompaction`` must run first) or
with a non-constant weight or mask (``BindParams`` must run first): :class:`~tvm_passes.errors.CompileError`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .errors import CompileError
from .sparse_conv import conv_of, const_value, function_name, info_of, kernel_function

class KernelSource(Protocol):
    """Where the sparse kernels come from (``schedules`` in the pipeline)."""

    def pack(self, scheme: str, weight: torch.Tensor, mask: torch.Tensor) -> Any:
        """Compact format of ``weight * mask`` (``.buffers("forward")``, ``.nbytes``)."""

    def forward_primfunc(self, fmt: Any, x_shape: tuple[int, ...], stride: int) -> tuple[tirx.PrimFunc, str]:
        """Scheduled forward PrimFunc ``(x, *buffers, y)`` and a description of its knobs."""


def _as_numpy(value) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@mutator
class _Lowerer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, source: KernelSource):
        super().__init__(mod)
        self.mod_ = mod
        self.source = source

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.GlobalVar):
            return call
        func = self.mod_[call.op]
        info = info_of(func)
        if info is None:
            return call
        weight, mask = const_value(call.args[1]), const_value(call.args[2])
        if weight is None or mask is None:
            raise CompileError(f"{info.fqn}: weight and mask must be constants (run BindParams before lowering)")
        conv = conv_of(func)
        if info.kernel == "dense":
            dense = relax.const((weight * mask).astype(np.float32))
            return relax.Call(conv.op, [call.args[0], dense], conv.attrs)
        if info.kernel == "channel":
            raise CompileError(f"{info.fqn}: channel layers are lowered by ChannelCompaction, which must run first")
        fmt = self.source.pack(info.scheme, torch.from_numpy(weight), torch.from_numpy(mask))
        x_shape = tuple(int(d) for d in call.args[0].ty.shape)
        stride = int(conv.attrs.strides[0])
        prim, knobs = self.source.forward_primfunc(fmt, x_shape, stride)
        name = "sparse_" + info.scheme + "_" + function_name(info.fqn)[len("mest_"):]
        prim = kernel_function(prim, name, info.fqn, info.scheme, fmt.nbytes, knobs)
        gvar = self.builder_.add_func(prim, name)
        buffers = [relax.const(_as_numpy(buf)) for buf in fmt.buffers("forward").values()]
        return relax.call_tir(gvar, relax.Tuple([call.args[0], *buffers]), call.ty)


@tvm.transform.module_pass(opt_level=0, name="mest.LowerSparseConv")
class LowerSparseConv:
    """Lower annotated convolutions (see the module docstring).

    Parameters
    ----------
    source : KernelSource
        Packs formats and gives the scheduled forward kernels.
    """

    def __init__(self, source: KernelSource):
        self.source = source

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        lowerer = _Lowerer(mod, self.source)
        main = lowerer.visit_expr(mod["main"])
        out = lowerer.builder_.get()
        out["main"] = main
        return relax.transform.DeadCodeElimination(["main"])(out)
