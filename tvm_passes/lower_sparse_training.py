"""LowerSparseTraining: a sparse layer's three convolutions become ``R.call_tir`` of the ``schedules`` kernels.

Where it runs: phase 5 of :func:`tvm_passes.training_pipeline.build_training_step`, after ``Gradient``
(which cannot differentiate a ``call_tir``, so it differentiates the dense conv first) and before
``AppendSGD`` (so the optimizer sees the compact parameter); on the training step and on the
evaluation function.

What it does, for every input ``param:<fqn>`` (the dense weight ``W``) of a layer in ``layers``
(irregular, block or pattern; a :class:`schedules.formats.SparseFormat` whose shapes and index dtypes,
not contents, shape the code):

- forward ``conv2d(x, W)`` -> ``call_tir(<kernel>_forward, (x, *forward buffers), y)``;
- grad-input ``conv2d_transpose(dY, W, kernel_layout="IOHW")`` (as ``Gradient`` emits it) ->
  ``call_tir(<kernel>_grad_input, (dY, *grad_input buffers), dx)``;
- grad-weight ``conv2d(x, dY, data_layout="CNHW", kernel_layout="IOHW", out_layout="CNHW")`` (and the
  ``strided_slice`` ``Gradient`` adds at stride 2), found by following the returned gradient of ``W``
  -> ``call_tir(<kernel>_grad_weight, (x, dY, *grad_weight buffers), dvalues) * valid`` (``valid`` is 1 at
  the format's kept slots and 0 at padding slots, so a padding slot never moves);
- the input ``param:<fqn>`` becomes the compact values (``[capacity]`` float32, same name), and the
  index buffers become inputs ``index:<fqn>:<buffer>`` (plus ``index:<fqn>:valid`` in a function with
  the grad-weight), appended after the other inputs: a new mask of the same capacity is new data for
  the same built module.

A kernel is named after what shapes its code (``sparse_<scheme>_<direction>_<O>x<I>_cap<capacity>_<x
shape>_s<stride>_<index dtypes>``) and shared by every layer of that structure (a ResNet stage's layers
build one kernel per direction); its ``mest.fqn`` is the first such layer. After it, no tensor of the
dense weight's shape remains (the gradient and, later, the momentum are
compact too).

What it refuses (:class:`~tvm_passes.errors.CompileError`): a channel-scheme layer (``ChannelTraining``
handles those), a layer that is no input of the function, a weight used by anything but those three
convolutions, a forward conv that is not 3x3 / padding 1 / dilation 1 / one group, a missing kernel
(stride other than 1 or 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from schedules.formats import DIRECTIONS, SparseFormat

from .errors import CompileError
from .sparse_conv import kernel_function
from .step_signature import input_name, inputs_of_kind

_CONV = "relax.nn.conv2d"
_CONV_T = "relax.nn.conv2d_transpose"
_SLICE = "relax.strided_slice"


class TrainingKernelSource(Protocol):
    """Where the kernels of the three directions come from (:class:`tvm_passes.kernels.SchedulesKernels`)."""

    def primfunc(self, direction: str, fmt: Any, x_shape: tuple[int, ...], stride: int) -> tuple[tirx.PrimFunc, str]:
        """Scheduled PrimFunc of ``direction`` and a description of its knobs."""


def index_values(fmt: SparseFormat) -> dict[str, np.ndarray]:
    """Values of the ``index:<fqn>:<buffer>`` inputs of a layer's format (every direction, and ``valid``)."""
    names = dict.fromkeys(n for d in DIRECTIONS for n in fmt.layout[d] if n != "values")
    values = {name: np.ascontiguousarray(fmt.indices[name]) for name in names}
    values["valid"] = fmt.valid_slots().numpy().astype(np.float32)
    return values


def _op(value) -> str:
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else ""


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


@dataclass
class _Layer:
    """Where one sparse weight is used in a function."""

    fqn: str
    fmt: SparseFormat
    weight: relax.Var
    forward: relax.Var | None = None
    grad_input: relax.Var | None = None
    grad_weight: relax.Var | None = None
    slices: list = field(default_factory=list)
    x: relax.Expr | None = None
    stride: int = 1
    buffers: dict[str, relax.Var] = field(default_factory=dict)
    values: relax.Var | None = None
    kernels: dict[str, relax.GlobalVar] = field(default_factory=dict)

    def buffer_args(self, direction: str) -> list[relax.Expr]:
        return [self.values if name == "values" else self.buffers[name] for name in self.fmt.layout[direction]]


def _returned_grads(func: relax.Function) -> list[relax.Expr] | None:
    ret = func.body.body
    if not isinstance(ret, relax.Tuple) or len(ret.fields) != 2 or not isinstance(ret.fields[1], relax.Tuple):
        return None
    return list(ret.fields[1].fields)


def _resolve(expr, bindings: dict) -> relax.Var:
    """Follow alias bindings (``a = b``) back to the var bound to a computation."""
    while isinstance(expr, relax.Var) and isinstance(bindings.get(expr), relax.Var):
        expr = bindings[expr]
    return expr


def _check_forward(fqn: str, call: relax.Call) -> int:
    attrs = call.attrs
    if [int(p) for p in attrs.padding] != [1, 1, 1, 1] or [int(d) for d in attrs.dilation] != [1, 1] \
            or int(attrs.groups) != 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        raise CompileError(f"{fqn}: the sparse kernels take 3x3 NCHW convolutions with padding 1, no dilation, one group")
    strides = [int(s) for s in attrs.strides]
    if strides[0] != strides[1]:
        raise CompileError(f"{fqn}: the sparse kernels take equal strides, got {strides}")
    return strides[0]


def _plan(func: relax.Function, layers: Mapping[str, SparseFormat]) -> dict[str, _Layer]:
    params = inputs_of_kind(func, "param")
    found = {}
    for fqn, fmt in layers.items():
        if fmt.scheme == "channel":
            raise CompileError(f"{fqn}: channel layers are lowered by ChannelTraining, not by LowerSparseTraining")
        if fqn not in params:
            raise CompileError(f"{fqn}: no input param:{fqn} to lower")
        found[params[fqn]] = _Layer(fqn, fmt, params[fqn])
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    for var, value in bindings.items():
        if not isinstance(value, relax.Call):
            continue
        for arg in value.args:
            layer = found.get(arg)
            if layer is None:
                continue
            if _op(value) == _CONV and value.args[1].same_as(arg):
                if layer.forward is not None:
                    raise CompileError(f"{layer.fqn}: the weight feeds more than one convolution")
                layer.forward, layer.x, layer.stride = var, value.args[0], _check_forward(layer.fqn, value)
            elif _op(value) == _CONV_T and value.args[1].same_as(arg) and value.attrs.kernel_layout == "IOHW":
                layer.grad_input = var
            else:
                raise CompileError(f"{layer.fqn}: the weight is used by {_op(value) or value.op}, not only by its convolutions")
    grads = _returned_grads(func)
    trainable = list(params.values())
    for layer in found.values():
        if layer.forward is None:
            raise CompileError(f"{layer.fqn}: the weight feeds no convolution")
        if grads is None:
            continue
        var = _resolve(grads[trainable.index(layer.weight)], bindings)
        while _op(bindings.get(var)) == _SLICE:
            layer.slices.append(var)
            var = _resolve(bindings[var].args[0], bindings)
        value = bindings.get(var)
        if _op(value) != _CONV or value.attrs.data_layout != "CNHW" or not value.args[0].same_as(layer.x):
            raise CompileError(f"{layer.fqn}: its gradient is not the grad-weight convolution Gradient emits")
        layer.grad_weight = var
    return {layer.fqn: layer for layer in found.values()}


@mutator
class _Lowerer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, layers: dict[str, _Layer]):
        super().__init__(mod)
        self.actions = {}
        for layer in layers.values():
            self.actions[layer.forward] = ("forward", layer)
            if layer.grad_input is not None:
                self.actions[layer.grad_input] = ("grad_input", layer)
            if layer.grad_weight is not None:
                self.actions[layer.grad_weight] = ("grad_weight", layer)
            for sliced in layer.slices:
                self.actions[sliced] = ("slice", layer)
        self.grad_values: dict[str, relax.Var] = {}

    def _emit(self, old_var, value):
        emit = self.builder_.emit if isinstance(old_var, relax.DataflowVar) else self.builder_.emit_output
        new_var = emit(value, old_var.name)
        self.set_var_remap(old_var, new_var)

    def visit_var_binding_(self, binding):
        action = self.actions.get(binding.var)
        if action is None:
            return super().visit_var_binding_(binding)
        direction, layer = action
        value = binding.value
        if direction == "slice":
            return self._emit(binding.var, self.grad_values[layer.fqn])
        args = [self.visit_expr(a) for a in value.args]
        if direction == "forward":
            call = relax.call_tir(layer.kernels["forward"], relax.Tuple([args[0], *layer.buffer_args("forward")]),
                                  binding.var.ty)
            return self._emit(binding.var, call)
        if direction == "grad_input":
            call = relax.call_tir(layer.kernels["grad_input"], relax.Tuple([args[0], *layer.buffer_args("grad_input")]),
                                  binding.var.ty)
            return self._emit(binding.var, call)
        out_ty = relax.TensorType((layer.fmt.capacity,), "float32")
        dvalues = self.builder_.emit(relax.call_tir(
            layer.kernels["grad_weight"], relax.Tuple([args[0], args[1], *layer.buffer_args("grad_weight")]), out_ty))
        masked = relax.op.multiply(dvalues, layer.buffers["valid"])
        self._emit(binding.var, masked)
        self.grad_values[layer.fqn] = self.get_var_remap(binding.var)


def _buffer_var(fqn: str, name: str, array) -> relax.Var:
    dtype = "float32" if not isinstance(array, np.ndarray) else str(array.dtype)
    return relax.Var(input_name("index", f"{fqn}:{name}"), relax.TensorType(tuple(array.shape), dtype))


@tvm.transform.module_pass(opt_level=0, name="mest.LowerSparseTraining")
class LowerSparseTraining:
    """Lower the sparse layers of the training and evaluation functions (see the module docstring).

    Parameters
    ----------
    layers : Mapping[str, SparseFormat]
        Packed format per sparse weight FQN (irregular, block or pattern).
    kernels : TrainingKernelSource
        Scheduled kernels of the three directions.
    func_names : sequence of str
        The functions to lower (each may hold any of the three directions).
    """

    def __init__(self, layers: Mapping[str, SparseFormat], kernels: TrainingKernelSource,
                 func_names: Sequence[str] = ("train_step",)):
        self.layers = dict(layers)
        self.kernels = kernels
        self.func_names = tuple(func_names)

    def _kernel(self, bb: relax.BlockBuilder, layer: _Layer, direction: str, x_shape, added: dict) -> relax.GlobalVar:
        """The kernel of ``direction``, shared by every layer of the same structure (one build each)."""
        fmt = layer.fmt
        dtypes = "_".join(str(fmt.indices[n].dtype) for n in fmt.layout[direction] if n != "values")
        name = (f"sparse_{fmt.scheme}_{direction}_{fmt.weight_shape[0]}x{fmt.weight_shape[1]}_cap{fmt.capacity}"
                f"_{'x'.join(str(d) for d in x_shape)}_s{layer.stride}_{dtypes}")
        if name not in added:
            prim, knobs = self.kernels.primfunc(direction, fmt, x_shape, layer.stride)
            prim = kernel_function(prim, name, layer.fqn, fmt.scheme, fmt.nbytes, knobs)
            added[name] = bb.add_func(prim, name)
        return added[name]

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        if not self.layers:
            return mod
        for func_name in self.func_names:
            mod = self._lower(mod, func_name)
        return mod

    def _lower(self, mod: tvm.IRModule, func_name: str) -> tvm.IRModule:
        func = mod[func_name]
        layers = _plan(func, self.layers)
        lowerer = _Lowerer(mod.clone(), layers)  # the builder adds to its module in place
        added = {str(gv.name_hint): gv for gv in mod.get_global_vars() if isinstance(mod[gv], tirx.PrimFunc)}
        extra = []
        for layer in layers.values():
            fmt = layer.fmt
            layer.values = relax.Var(layer.weight.name, relax.TensorType((fmt.capacity,), "float32"))
            directions = [d for d in DIRECTIONS if getattr(layer, d) is not None]
            names = dict.fromkeys(n for d in directions for n in fmt.layout[d] if n != "values")
            layer.buffers = {n: _buffer_var(layer.fqn, n, fmt.indices[n]) for n in names}
            if layer.grad_weight is not None:
                layer.buffers["valid"] = relax.Var(input_name("index", f"{layer.fqn}:valid"),
                                                   relax.TensorType((fmt.capacity,), "float32"))
            extra.extend(layer.buffers.values())
            x_shape = _shape(layer.x)
            for direction in directions:
                layer.kernels[direction] = self._kernel(lowerer.builder_, layer, direction, x_shape, added)
            lowerer.set_var_remap(layer.weight, layer.values)
        body = lowerer.visit_expr(func)
        weights = {layer.weight: layer.values for layer in layers.values()}
        params = [weights.get(p, p) for p in func.params]
        out = lowerer.builder_.get()
        out[func_name] = relax.Function([*params, *extra], body.body, attrs=func.attrs)
        return relax.transform.Normalize()(out)
