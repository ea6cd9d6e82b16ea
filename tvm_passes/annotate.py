"""AnnotateSparsity: mark each masked convolution with its scheme, density and mask, by FQN.

Where it runs: phase 2 of :func:`tvm_passes.pipeline.compile_model`, right after the import and while
the parameters are still function inputs (their names are the only link to the PyTorch FQNs), before
``BindParams``.

What it does: every ``relax.nn.conv2d`` whose weight is a masked parameter becomes a call of a private
function ``mest_<fqn>(x, w, mask)`` carrying ``Composite = "mest.sparse_conv2d"`` and the annotation
(see :mod:`tvm_passes.sparse_conv`); the mask is passed as a bool constant.

What it refuses: a mask naming no parameter of the module, a mask whose shape differs from its
parameter, an unknown scheme (:class:`~tvm_passes.errors.MaskError`). A masked parameter that is not a
conv2d weight (e.g. a masked classifier) is left alone: there is no sparse kernel for it, and the
pipeline reports it as dense. Whether a kernel exists for the conv's geometry is not decided here but in
``KeepDense``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .errors import MaskError
from schedules.schemes import SCHEMES

from .sparse_conv import SparseConvInfo, function_name, make_function


@dataclass(frozen=True)
class LayerMask:
    """The sparsity of one parameter, as the trainer saved it.

    Attributes
    ----------
    scheme : str
        One of :data:`schedules.schemes.SCHEMES`.
    mask : numpy.ndarray
        Bool array of the parameter's shape, True where a weight is kept.
    """

    scheme: str
    mask: np.ndarray

    @property
    def density(self) -> float:
        """Kept fraction of the mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0


@mutator
class _Annotator(PyExprMutator):
    def __init__(self, mod, by_param: Mapping[str, tuple[str, LayerMask]]):
        super().__init__(mod)
        self.by_param = by_param
        self.used: set[str] = set()

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        weight = call.args[1]
        if not isinstance(weight, relax.Var) or weight.name not in self.by_param:
            return call
        fqn, layer = self.by_param[weight.name]
        self.used.add(weight.name)
        info = SparseConvInfo(fqn=fqn, scheme=layer.scheme, density=round(layer.density, 6), kernel=layer.scheme)
        func = make_function(call.attrs, call.args[0].ty, weight.ty, info)
        gvar = self.builder_.add_func(func, function_name(fqn))
        return relax.Call(gvar, [call.args[0], weight, relax.const(layer.mask, "bool")])


@tvm.transform.module_pass(opt_level=0, name="mest.AnnotateSparsity")
class AnnotateSparsity:
    """Mark masked convolutions of ``main``, matched by parameter FQN.

    Parameters
    ----------
    layers : Mapping[str, LayerMask]
        Masks and schemes keyed by parameter FQN (``layer1.0.conv1.weight``).
    param_fqns : Mapping[str, str]
        Name of each parameter of ``main`` -> its FQN (from :func:`tvm_passes.importer.import_model`).
    """

    def __init__(self, layers: Mapping[str, LayerMask], param_fqns: Mapping[str, str]):
        self.layers = dict(layers)
        self.param_fqns = dict(param_fqns)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the class docstring)."""
        params = {p.name: p for p in mod["main"].params}
        fqn_to_param = {fqn: name for name, fqn in self.param_fqns.items()}
        by_param = {}
        for fqn, layer in self.layers.items():
            if layer.scheme not in SCHEMES:
                raise MaskError(f"unknown scheme {layer.scheme!r} for {fqn} (known: {', '.join(SCHEMES)})")
            name = fqn_to_param.get(fqn)
            if name is None or name not in params:
                raise MaskError(f"mask for {fqn!r} names no parameter of the model")
            shape = tuple(int(d) for d in params[name].ty.shape)
            if tuple(layer.mask.shape) != shape or layer.mask.dtype != np.bool_:
                raise MaskError(
                    f"mask for {fqn} is {layer.mask.dtype}{list(layer.mask.shape)}, expected bool{list(shape)}"
                )
            by_param[name] = (fqn, layer)
        annotator = _Annotator(mod, by_param)
        main = annotator.visit_expr(mod["main"])
        out = annotator.builder_.get()
        out["main"] = main
        return out
