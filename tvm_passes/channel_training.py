"""ChannelTraining: a channel-sparse conv of the training step becomes a smaller dense conv on its kept filters.

Where it runs: phase 3 of :func:`tvm_passes.training_pipeline.build_training_step`, after
``TrainBatchNorm`` (whose private batch-norm functions it swaps for compact ones) and before the private
functions are inlined and ``Gradient`` runs (the convs stay dense Relax ops, so ``Gradient`` derives
their compact gradients itself); on the training and the evaluation function.

What it does, for each layer ``param:<fqn>`` of ``layers`` (a :class:`schedules.formats.ChannelFormat`
of ``F`` filter slots out of ``C``: the kept filters, then zero padding filters):

- the input ``param:<fqn>`` becomes the compact values (``[F*I*9]``) and the conv reads
  ``reshape(values, [F, I, kh, kw])``: ``F`` output channels;
- the batch norm after it runs on those ``F`` channels (its ``gamma``/``beta`` gathered by
  ``index:<fqn>:gather``, padding channels reading 0 so that they stay 0), and updates the running
  statistics of all ``C`` channels (``index:<fqn>:scatter``), a pruned channel's as a zero channel's;
- **slice**: if the batch norm's output flows through a ``relu`` used once into one conv whose weight is
  an input (a dense parameter or another channel layer), that conv reads only the ``F`` channels: its
  weight is ``take(W, index:<fqn>:kept, axis=1)`` (its gradient is 0 at the channels it does not read,
  as in the masked dense step, and its weight decay still applies to them);
- **expand** otherwise (e.g. into a residual add): the ``F`` channels are put back in place over ``C``
  with ``take(concat([y, zeros]), scatter, axis=1)``; a pruned channel is exactly 0, as in the masked
  dense step (whose batch-norm parameters of pruned channels are masked to 0).

Index inputs (int32, appended after the other inputs; :func:`index_values` gives their values for a
format, so a new kept set of the same ``F`` needs no rebuild): ``kept`` ``[F]`` (channel of each slot, 0
for padding), ``gather`` ``[F]`` (``C`` for padding), ``scatter`` ``[C]`` (slot of each channel, ``F``
if pruned).

What it refuses (:class:`~tvm_passes.errors.CompileError`): a channel layer that is no input, whose
weight feeds anything but one conv, or whose conv does not feed exactly one of ``TrainBatchNorm``'s
batch norms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from schedules.formats import ChannelFormat

from .errors import CompileError
from .step_signature import input_name, inputs_of_kind
from .train_batch_norm import batch_norm_function, batch_norm_spec

_CONV = "relax.nn.conv2d"
_INDEX_NAMES = ("kept", "gather", "scatter")


def index_values(fmt: ChannelFormat) -> dict[str, np.ndarray]:
    """Values of the ``index:<fqn>:kept|gather|scatter`` inputs of a channel layer's format."""
    channels = fmt.weight_shape[0]
    slots = fmt.capacity // int(np.prod(fmt.weight_shape[1:]))
    kept = fmt.indices["kept"].astype(np.int32)
    used = fmt.filters_used
    gather = kept.copy()
    gather[used:] = channels
    scatter = np.full(channels, slots, dtype=np.int32)
    scatter[kept[:used]] = np.arange(used, dtype=np.int32)
    kept[used:] = 0
    return {"kept": kept, "gather": gather, "scatter": scatter}


def _op(value) -> str:
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else ""


@dataclass
class _Layer:
    fqn: str
    fmt: ChannelFormat
    weight: relax.Var
    values: relax.Var
    index: dict[str, relax.Var]
    conv: relax.Var = None
    batch_norm: relax.Var = None
    output: relax.Var = None  # the var holding the batch norm's y
    sliced_consumer: relax.Var | None = None

    @property
    def slots(self) -> int:
        return self.fmt.capacity // int(np.prod(self.fmt.weight_shape[1:]))


def _users(bindings: Mapping) -> dict:
    users: dict = {}

    def add(expr, var):
        if isinstance(expr, relax.Var):
            users.setdefault(expr, []).append(var)
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                add(field, var)

    for var, value in bindings.items():
        if isinstance(value, relax.Call):
            for arg in value.args:
                add(arg, var)
        elif isinstance(value, relax.TupleGetItem):
            add(value.tuple_value, var)
        else:
            add(value, var)
    return users


def _plan(mod: tvm.IRModule, func: relax.Function, layers: Mapping[str, ChannelFormat],
          fixed: Iterable[str]) -> list[_Layer]:
    params = inputs_of_kind(func, "param")
    fixed_params = {params[fqn] for fqn in fixed if fqn in params}
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    users = _users(bindings)
    ret_uses = set()
    ret = func.body.body
    for field in ret.fields if isinstance(ret, relax.Tuple) else [ret]:
        ret_uses.add(field)
    planned = []
    for fqn, fmt in layers.items():
        if fqn not in params:
            raise CompileError(f"{fqn}: no input param:{fqn} to compact")
        weight = params[fqn]
        values = relax.Var(weight.name, relax.TensorType((fmt.capacity,), "float32"))
        index = {name: relax.Var(input_name("index", f"{fqn}:{name}"), relax.TensorType(
            (fmt.weight_shape[0],) if name == "scatter" else (fmt.capacity // int(np.prod(fmt.weight_shape[1:])),),
            "int32")) for name in _INDEX_NAMES}
        layer = _Layer(fqn, fmt, weight, values, index)
        convs = users.get(weight, [])
        if len(convs) != 1 or _op(bindings[convs[0]]) != _CONV or not bindings[convs[0]].args[1].same_as(weight):
            raise CompileError(f"{fqn}: a channel layer's weight must feed exactly one convolution")
        layer.conv = convs[0]
        bns = users.get(layer.conv, [])
        if len(bns) != 1 or not isinstance(bindings[bns[0]].op, tvm.ir.GlobalVar) \
                or batch_norm_spec(mod[bindings[bns[0]].op]) is None or not bindings[bns[0]].args[0].same_as(layer.conv):
            raise CompileError(f"{fqn}: a channel layer's convolution must feed exactly one batch norm")
        layer.batch_norm = bns[0]
        spec = batch_norm_spec(mod[bindings[bns[0]].op])
        if spec.training:
            outputs = [v for v in users.get(layer.batch_norm, [])
                       if isinstance(bindings[v], relax.TupleGetItem) and bindings[v].index == 0]
            if len(outputs) != 1:
                raise CompileError(f"{fqn}: its batch norm's output is not read once")
            layer.output = outputs[0]
        else:
            layer.output = layer.batch_norm
        relus = users.get(layer.output, [])
        if len(relus) == 1 and _op(bindings[relus[0]]) == "relax.nn.relu" and relus[0] not in ret_uses:
            consumers = users.get(relus[0], [])
            if len(consumers) == 1 and _op(bindings[consumers[0]]) == _CONV:
                conv = bindings[consumers[0]]
                if conv.args[0].same_as(relus[0]) and isinstance(conv.args[1], relax.Var) \
                        and conv.args[1] in params.values() and conv.args[1] not in fixed_params \
                        and int(conv.attrs.groups) == 1:
                    layer.sliced_consumer = consumers[0]
        planned.append(layer)
    return planned


@mutator
class _Compactor(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, layers: Sequence[_Layer]):
        super().__init__(mod)
        self.mod_ = mod
        self.by_weight = {layer.weight: layer for layer in layers}
        self.by_conv = {layer.conv: layer for layer in layers}
        self.by_bn = {layer.batch_norm: layer for layer in layers}
        self.sliced = {layer.sliced_consumer: layer for layer in layers if layer.sliced_consumer is not None}
        self.expanded = {layer.output: layer for layer in layers if layer.sliced_consumer is None}
        self.compact_bn: dict = {}

    def _emit(self, old_var, value):
        emit = self.builder_.emit if isinstance(old_var, relax.DataflowVar) else self.builder_.emit_output
        new_var = emit(value, old_var.name)
        self.set_var_remap(old_var, new_var)
        return new_var

    def _conv(self, var, value):
        weight = value.args[1]
        layer = self.by_weight.get(weight)
        new_weight = weight
        if layer is not None:
            new_weight = self.builder_.emit(relax.op.reshape(layer.values, (layer.slots, *layer.fmt.weight_shape[1:])))
        producer = self.sliced.get(var)
        if producer is not None:
            new_weight = self.builder_.emit(relax.op.take(new_weight, producer.index["kept"], axis=1))
        return self._emit(var, relax.Call(value.op, [self.visit_expr(value.args[0]), new_weight], value.attrs))

    def _batch_norm(self, var, value, layer: _Layer):
        spec = replace(batch_norm_spec(self.mod_[value.op]), compact=True)
        x = self.visit_expr(value.args[0])
        spec = replace(spec, x_shape=tuple(int(d) for d in x.ty.shape))
        name = f"{value.op.name_hint}_compact"
        if name not in self.compact_bn:
            self.compact_bn[name] = self.builder_.add_func(batch_norm_function(spec), name)
        args = [x, *(self.visit_expr(a) for a in value.args[1:]), layer.index["gather"]]
        if spec.training:
            args.append(layer.index["scatter"])
        return self._emit(var, relax.Call(self.compact_bn[name], args))

    def visit_var_binding_(self, binding):
        var, value = binding.var, binding.value
        if var in self.by_conv or var in self.sliced:
            new_var = self._conv(var, value)
        elif var in self.by_bn:
            new_var = self._batch_norm(var, value, self.by_bn[var])
        else:
            super().visit_var_binding_(binding)
            new_var = None
        layer = self.expanded.get(var)
        if layer is not None:  # its type changed to F channels, so the mutator re-emitted it as a new var
            new_var = new_var if new_var is not None else self.get_var_remap(var)
            shape = [int(d) for d in new_var.ty.shape]
            zeros = relax.op.zeros([shape[0], 1, *shape[2:]], "float32")
            both = self.builder_.emit(relax.op.concat([new_var, zeros], axis=1))
            self._emit(var, relax.op.take(both, layer.index["scatter"], axis=1))


@tvm.transform.module_pass(opt_level=0, name="mest.ChannelTraining")
class ChannelTraining:
    """Compact the channel-sparse layers (see the module docstring).

    Parameters
    ----------
    layers : Mapping[str, ChannelFormat]
        Format per channel layer's weight FQN.
    fixed : iterable of str
        FQNs of weights whose input channels must stay (other sparse layers' kernels take all of them).
    func_names : sequence of str
        The functions to rewrite.
    """

    def __init__(self, layers: Mapping[str, ChannelFormat], fixed: Iterable[str] = (),
                 func_names: Sequence[str] = ("main",)):
        self.layers = dict(layers)
        self.fixed = tuple(fixed)
        self.func_names = tuple(func_names)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        if not self.layers:
            return mod
        for func_name in self.func_names:
            func = mod[func_name]
            layers = _plan(mod, func, self.layers, self.fixed)
            compactor = _Compactor(mod.clone(), layers)  # the builder adds to its module in place
            body = compactor.visit_expr(func)
            weights = {layer.weight: layer.values for layer in layers}
            used = {v for v in relax.analysis.free_vars(body.body)}
            extra = [v for layer in layers for v in layer.index.values() if v in used]
            out = compactor.builder_.get()
            params = [weights.get(p, p) for p in func.params]
            out[func_name] = relax.Function([*params, *extra], body.body, attrs=func.attrs)
            mod = relax.transform.DeadCodeElimination()(relax.transform.Normalize()(out))
        return mod
