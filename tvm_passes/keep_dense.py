"""KeepDense: decide which annotated convolutions stay dense, and say why.

Where it runs: phase 4 of the pipeline, after ``FoldBatchNorm`` and before ``ChannelCompaction`` and
``LowerSparseConv``, which lower only the layers this pass left sparse.

What it does: an annotated convolution (see :mod:`tvm_passes.sparse_conv`) gets ``mest.kernel =
"dense"`` and a ``mest.reason`` when

- its density is above the crossover of its scheme for the target (:data:`tvm_passes.config.DENSE_CROSSOVER`):
  the sparse kernel would be slower than the dense conv;
- no kernel of ``schedules`` takes its geometry: the kernels are NCHW/OIHW float32, ungrouped and
  undilated (checked here), and each scheme's spec says which shapes, paddings and strides its kernel
  takes (:meth:`schedules.schemes.base.SchemeSpec.kernel_refusal`: 3x3, padding 1, stride 1 or 2, and
  block needs ``out_channels`` divisible by its block size; channel compaction is a dense conv and
  takes any such conv).

It records every annotated layer's decision (kernel and reason, by FQN) in the module attribute
``mest.layers`` (:data:`LAYERS_ATTR`), which the report reads once the later passes have lowered the
annotated functions away.

It refuses nothing: every layer it cannot lower stays a correct dense conv.
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax

from schedules.schemes import get_spec

from .sparse_conv import conv_of, info_of

#: Module attribute: ``{fqn: {"kernel": ..., "reason": ...}}`` of every annotated layer.
LAYERS_ATTR = "mest.layers"


def _geometry_refusal(scheme: str, func: relax.Function) -> str:
    conv = conv_of(func)
    attrs = conv.attrs
    weight_shape = [int(d) for d in func.params[1].ty.shape]
    dtype = str(func.params[0].ty.dtype)
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or dtype != "float32":
        return f"no {scheme} kernel for layout {attrs.data_layout}/{attrs.kernel_layout} {dtype}"
    if int(attrs.groups) != 1 or any(int(d) != 1 for d in attrs.dilation):
        return f"no {scheme} kernel for grouped or dilated convolutions"
    return get_spec(scheme).kernel_refusal(weight_shape, attrs.padding, attrs.strides)


@tvm.transform.module_pass(opt_level=0, name="mest.KeepDense")
class KeepDense:
    """Mark the annotated convolutions that stay dense.

    Parameters
    ----------
    crossover : Mapping[str, float]
        Per scheme, the highest density that still uses the sparse kernel
        (:attr:`tvm_passes.config.CompileConfig.crossover`).
    """

    def __init__(self, crossover: Mapping[str, float]):
        self.crossover = dict(crossover)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        out = mod.clone()
        decided = {}
        for gvar, func in mod.functions_items():
            info = info_of(func)
            if info is None:
                continue
            if info.kernel == "dense":
                decided[info.fqn] = {"kernel": "dense", "reason": info.reason}
                continue
            reason = _geometry_refusal(info.scheme, func)
            limit = self.crossover.get(info.scheme, 0.0)
            if not reason and info.density > limit:
                reason = f"density {info.density:.3f} above the {info.scheme} crossover {limit:.2f}: dense is faster"
            if reason:
                out[gvar] = func.with_attrs({"mest.kernel": "dense", "mest.reason": reason})
            decided[info.fqn] = {"kernel": "dense" if reason else info.kernel, "reason": reason}
        return out.with_attr(LAYERS_ATTR, decided)
