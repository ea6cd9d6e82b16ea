"""ChannelCompaction: a channel-sparse conv becomes a smaller dense conv on its kept filters.

Where it runs: phase 5 of the pipeline, after ``FoldBatchNorm`` (the folded bias tells whether a
pruned channel is zero) and ``KeepDense``, before ``LowerSparseConv`` (so a sparse consumer is still an
annotated call whose weight and mask can be sliced).

What it does, for each annotated conv with ``mest.kernel == "channel"`` keeping ``K`` of ``O`` filters:

- the producer becomes ``relax.nn.conv2d(x, W[kept] * mask[kept])``: ``K`` output channels, no zero
  filter is computed;
- **slice**: if the output flows through an optional folded bias ``add`` and an optional ``relu``, each
  used once, into one conv (plain with a constant weight, or annotated), and every pruned channel is
  exactly zero at that point (folded bias of a pruned channel 0, or negative before a relu; true when
  the trainer masks the BN of pruned filters), then the bias keeps its ``K`` entries and the consumer's
  weight (and mask) keep only the ``K`` input channels: the consumer reads only what exists;
- **expand** otherwise (e.g. the second conv of a residual block, whose output meets the shortcut):
  the ``K`` channels are put back in place with ``take`` over ``concat([y, zeros])``; pruned channels
  are exact zeros, as the dense conv would give them.

What it refuses: nothing; a conv that keeps no filter becomes ``zeros`` (expand).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .sparse_conv import conv_of, const_value, info_of, make_function

_CONV = "relax.nn.conv2d"


def _op_name(value) -> str:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return ""


class _Consumers:
    """Who reads each dataflow variable of ``main`` (``relax.analysis.udchain`` of every dataflow block).

    Only a ``DataflowVar`` can be known to have a sole consumer: its uses are all in its block. An
    output variable may be read by later blocks or returned, so it never has one here.
    """

    def __init__(self, func: relax.Function):
        self.values = relax.analysis.get_var2val(func)
        self.users: dict = {}
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                self.users.update(relax.analysis.udchain(block))

    def sole(self, var):
        """The binding var of the one call that reads ``var``, once; None if there is no such call."""
        users = list(self.users.get(var, ())) if isinstance(var, relax.DataflowVar) else []
        if len(users) != 1:
            return None
        value = self.values.get(users[0])
        if not isinstance(value, relax.Call) or sum(arg.same_as(var) for arg in value.args) != 1:
            return None
        return users[0]


class _Plan:
    """What to do with the bindings of main: keyed by the original binding var."""

    def __init__(self):
        self.compact: dict = {}  # producer var -> kept filter indices
        self.expand: set = set()  # producer vars whose K channels are put back in place
        self.bias: dict = {}  # bias-add var -> kept indices
        self.in_slice: dict = {}  # consumer var -> kept input channels


def _make_plan(mod: tvm.IRModule, func: relax.Function) -> _Plan:
    consumers = _Consumers(func)
    bindings = consumers.values
    plan = _Plan()
    for var, value in bindings.items():
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar)):
            continue
        info = info_of(mod[value.op])
        mask = const_value(value.args[2])
        if info is None or info.kernel != "channel" or mask is None or const_value(value.args[1]) is None:
            continue
        kept = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        plan.compact[var] = kept
        pruned = np.setdiff1d(np.arange(mask.shape[0]), kept)
        zero_at = np.zeros(len(pruned))
        cur, bias_var = var, None
        nxt = consumers.sole(cur)
        if nxt is not None:
            nval = bindings[nxt]
            bias = const_value(nval.args[1]) if _op_name(nval) == "relax.add" else None
            if bias is not None and nval.args[0].same_as(cur) and bias.shape == (1, mask.shape[0], 1, 1):
                zero_at = bias.reshape(-1)[pruned]
                cur, bias_var = nxt, nxt
        nxt = consumers.sole(cur)
        if nxt is not None and _op_name(bindings[nxt]) == "relax.nn.relu":
            cur = nxt
            zero_at = np.maximum(zero_at, 0.0)
        consumer = consumers.sole(cur)
        if consumer is not None and len(kept) and not np.any(zero_at) and _is_conv_on(mod, bindings[consumer], cur):
            plan.in_slice[consumer] = kept
            if bias_var is not None:
                plan.bias[bias_var] = kept
        else:
            plan.expand.add(var)
    return plan


def _is_conv_on(mod: tvm.IRModule, value, data) -> bool:
    if not isinstance(value, relax.Call) or not value.args or not value.args[0].same_as(data):
        return False
    if _op_name(value) == _CONV:
        return const_value(value.args[1]) is not None and int(value.attrs.groups) == 1
    if isinstance(value.op, tvm.ir.GlobalVar) and info_of(mod[value.op]) is not None:
        return const_value(value.args[1]) is not None and const_value(value.args[2]) is not None
    return False


@mutator
class _Compactor(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plan: _Plan):
        super().__init__(mod)
        self.mod_ = mod
        self.plan = plan

    def _emit(self, old_var, value):
        if isinstance(old_var, relax.DataflowVar):
            new_var = self.builder_.emit(value, old_var.name)
        else:
            new_var = self.builder_.emit_output(value, old_var.name)
        self.set_var_remap(old_var, new_var)

    def visit_var_binding_(self, binding):
        var, value = binding.var, binding.value
        plan = self.plan
        if var not in plan.compact and var not in plan.bias and var not in plan.in_slice:
            return super().visit_var_binding_(binding)
        data = self.visit_expr(value.args[0])
        if var in plan.bias:
            bias = const_value(value.args[1])[:, plan.bias[var]]
            return self._emit(var, relax.op.add(data, relax.const(bias)))
        weight = const_value(value.args[1])
        mask = const_value(value.args[2]) if len(value.args) > 2 else None
        if var in plan.in_slice:
            weight = weight[:, plan.in_slice[var]]
            mask = None if mask is None else mask[:, plan.in_slice[var]]
        if var not in plan.compact:  # a consumer whose input was sliced
            if mask is None:
                return self._emit(var, relax.Call(value.op, [data, relax.const(weight)], value.attrs))
            func = self.mod_[value.op]
            info = info_of(func)
            w_ty = relax.TensorType(weight.shape, "float32")
            new_func = make_function(conv_of(func).attrs, data.ty, w_ty, info)
            self.builder_.update_func(value.op, new_func)
            return self._emit(var, relax.Call(value.op, [data, relax.const(weight), relax.const(mask, "bool")]))
        kept = plan.compact[var]
        out_shape = [int(d) for d in var.ty.shape]
        if len(kept) == 0:
            return self._emit(var, relax.op.zeros(out_shape, "float32"))
        compact = (weight * mask)[kept].astype(np.float32)
        conv = relax.Call(tvm.ir.Op.get(_CONV), [data, relax.const(compact)], conv_of(self.mod_[value.op]).attrs)
        if var not in plan.expand:
            return self._emit(var, conv)
        y = self.builder_.emit(conv)
        zeros = self.builder_.emit(relax.op.zeros([out_shape[0], 1, *out_shape[2:]], "float32"))
        both = self.builder_.emit(relax.op.concat([y, zeros], axis=1))
        index = np.full(out_shape[1], len(kept), dtype=np.int32)
        index[kept] = np.arange(len(kept), dtype=np.int32)
        return self._emit(var, relax.op.take(both, relax.const(index), axis=1))


@tvm.transform.module_pass(opt_level=0, name="mest.ChannelCompaction")
class ChannelCompaction:
    """Compact channel-sparse convolutions of ``main`` (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        plan = _make_plan(mod, mod["main"])
        if not plan.compact:
            return mod
        compactor = _Compactor(mod, plan)
        main = compactor.visit_expr(mod["main"])
        out = compactor.builder_.get()
        out["main"] = main
        return relax.transform.DeadCodeElimination(["main"])(out)
