"""The annotated sparse convolution: the IR contract shared by the passes of ``tvm_passes``.

``AnnotateSparsity`` turns each masked ``relax.nn.conv2d`` into a call of a private Relax function that
holds the same convolution and carries, as function attributes, what the later passes need::

    @R.function(private=True)
    def mest_layer1_0_conv1(x, w, mask):          # mask: bool tensor, same shape as w
        R.func_attr({"Composite": "mest.sparse_conv2d", "mest.fqn": "layer1.0.conv1.weight",
                     "mest.scheme": "irregular", "mest.density": 0.1, "mest.kernel": "irregular"})
        wm = R.multiply(w, R.astype(mask, "float32"))
        gv = R.nn.conv2d(x, wm, ...)

``mest.kernel`` is the scheme until ``KeepDense`` sets it to ``"dense"`` (with ``mest.reason``).
The mask is an argument, not an attribute, so that it is data in the graph: it is bound as a constant
with the weights and sliced by ``ChannelCompaction`` like the weight. The body computes ``conv2d(x, w * mask)``,
which is what the layer means (a weight outside the mask does not exist), so a module is valid,
buildable and right after every phase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

#: Value of the ``Composite`` attribute of an annotated sparse convolution.
COMPOSITE = "mest.sparse_conv2d"

#: ``op_pattern`` value of an opaque PrimFunc (``tvm.relax.transform.OpPatternKind.kOpaque``).
_OPAQUE = 8


@dataclass(frozen=True)
class SparseConvInfo:
    """What an annotated convolution says about itself.

    Attributes
    ----------
    fqn : str
        Fully qualified name of the weight parameter (``layer2.3.conv1.weight``).
    scheme : str
        One of :data:`schedules.schemes.SCHEMES`.
    density : float
        Fraction of the mask that is kept.
    kernel : str
        ``scheme`` or ``"dense"`` once ``KeepDense`` decided so.
    reason : str
        Why the layer is dense (empty otherwise).
    """

    fqn: str
    scheme: str
    density: float
    kernel: str
    reason: str = ""


def function_name(fqn: str) -> str:
    """Global name of the annotated function of the weight ``fqn`` (``layer1.0.conv1.weight`` ->
    ``mest_layer1_0_conv1``)."""
    stem = fqn[: -len(".weight")] if fqn.endswith(".weight") else fqn
    return "mest_" + re.sub(r"[^0-9A-Za-z_]", "_", stem)


def make_function(conv_attrs, x_ty, w_ty, info: SparseConvInfo) -> relax.Function:
    """Build the private function of one annotated convolution.

    Parameters
    ----------
    conv_attrs : relax.attrs.Conv2DAttrs
        Attributes of the original ``relax.nn.conv2d``.
    x_ty, w_ty : relax.TensorType
        Types of the data and weight arguments (the mask has the weight's shape, dtype bool).
    info : SparseConvInfo
        The annotation.

    Returns
    -------
    relax.Function
        ``(x, w, mask) -> conv2d(x, w * mask)`` with the attributes described in the module docstring.
    """
    x = relax.Var("x", x_ty)
    w = relax.Var("w", w_ty)
    mask = relax.Var("mask", relax.TensorType(w_ty.shape, "bool"))
    bb = relax.BlockBuilder()
    attrs = {
        "Composite": COMPOSITE,
        "mest.fqn": info.fqn,
        "mest.scheme": info.scheme,
        "mest.density": float(info.density),
        "mest.kernel": info.kernel,
    }
    if info.reason:
        attrs["mest.reason"] = info.reason
    with bb.function("f", [x, w, mask], attrs=attrs, private=True):
        with bb.dataflow():
            masked = bb.emit(relax.op.multiply(w, relax.op.astype(mask, w_ty.dtype)))
            gv = bb.emit_output(relax.Call(tvm.ir.Op.get("relax.nn.conv2d"), [x, masked], conv_attrs))
        bb.emit_func_output(gv)
    return bb.get()["f"]


def kernel_function(prim, name: str, fqn: str, scheme: str, nbytes: int, knobs: str) -> "tvm.tirx.PrimFunc":
    """A scheduled sparse kernel as the lowering passes add it to a module.

    Attributes: ``global_symbol`` ``name``, ``op_pattern`` opaque (fusion leaves it alone), and for the
    report ``mest.fqn``, ``mest.scheme``, ``mest.kernel``, ``mest.bytes_stored``, ``mest.knobs``.
    """
    return prim.with_attrs(
        {
            "global_symbol": name,
            "op_pattern": _OPAQUE,
            "mest.fqn": fqn,
            "mest.scheme": scheme,
            "mest.kernel": scheme,
            "mest.bytes_stored": int(nbytes),
            "mest.knobs": knobs,
        }
    )


def info_of(func) -> SparseConvInfo | None:
    """The annotation of ``func``, or None if it is not an annotated sparse convolution."""
    if not isinstance(func, relax.Function) or func.attrs is None:
        return None
    attrs = func.attrs
    if "Composite" not in attrs or str(attrs["Composite"]) != COMPOSITE:
        return None
    return SparseConvInfo(
        fqn=str(attrs["mest.fqn"]),
        scheme=str(attrs["mest.scheme"]),
        density=float(attrs["mest.density"]),
        kernel=str(attrs["mest.kernel"]),
        reason=str(attrs["mest.reason"]) if "mest.reason" in attrs else "",
    )


def conv_of(func: relax.Function) -> relax.Call:
    """The ``relax.nn.conv2d`` call inside an annotated function."""
    return func.body.blocks[0].bindings[-1].value


def const_value(expr) -> np.ndarray | None:
    """NumPy value of a Relax constant, or None if ``expr`` is not a constant."""
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    return None
