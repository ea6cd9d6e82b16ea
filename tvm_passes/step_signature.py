"""The calling convention of the training step: named inputs and outputs, the IR contract of the
training passes (:mod:`tvm_passes.training_pipeline`).

Every input of the functions the training passes build is named ``<kind>:<key>``:

- ``data:x``, ``data:labels``, ``data:example_weights``, ``data:lr``: the batch and the step's scalars;
- ``param:<fqn>``: a trainable parameter (``param:layer1.0.conv1.weight``; for a sparse layer, after
  lowering, its compact values);
- ``momentum:<fqn>``: its SGD momentum buffer (the shape of the parameter, compact for a sparse layer);
- ``stat:<fqn>``: a BatchNorm running statistic (``stat:bn1.running_mean``, ``...num_batches_tracked``);
- ``index:<fqn>:<buffer>``: an index buffer of a sparse layer's compact format (``row_ptr``, ...).

The outputs are a flat tuple whose names are the function attribute ``mest.outputs`` (a list of
strings): ``loss``, ``correct``, ``logits``, and ``param:``/``momentum:``/``stat:`` names for the
updated values, ``grad:<fqn>`` for a sparse layer's gradient. A pass that adds inputs or outputs keeps
the attribute true; the trainer binds tensors by these names, never by position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax

#: Function attribute holding the names of the flat output tuple.
OUTPUTS_ATTR = "mest.outputs"


def input_name(kind: str, key: str) -> str:
    """``<kind>:<key>``, the name of a function input."""
    return f"{kind}:{key}"


def split_name(name: str) -> tuple[str, str]:
    """``("param", "conv1.weight")`` for ``param:conv1.weight``."""
    kind, _, key = name.partition(":")
    return kind, key


def outputs_of(func: relax.Function) -> list[str]:
    """Names of the flat output tuple of ``func`` (``["logits"]`` if it has no ``mest.outputs``)."""
    if func.attrs is not None and OUTPUTS_ATTR in func.attrs:
        return [str(name) for name in func.attrs[OUTPUTS_ATTR]]
    return ["logits"]


def output_exprs(func: relax.Function) -> list[relax.Expr]:
    """The expressions of the flat output tuple of ``func`` (one if it returns a tensor)."""
    ret = func.body.body
    names = outputs_of(func)
    if isinstance(ret, relax.Tuple):
        fields = list(ret.fields)
    elif len(names) == 1:
        fields = [ret]
    else:
        bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        fields = list(bindings[ret].fields)
    if len(fields) != len(names):
        raise ValueError(f"function returns {len(fields)} values, {OUTPUTS_ATTR} names {len(names)}")
    return fields


def inputs_of_kind(func: relax.Function, kind: str) -> dict[str, relax.Var]:
    """The inputs ``<kind>:<key>`` of ``func`` by key, in calling order."""
    return {split_name(p.name)[1]: p for p in func.params if split_name(p.name)[0] == kind}


@dataclass(frozen=True)
class Slot:
    """One input or output of a built step: its name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def kind(self) -> str:
        """``param``, ``data``, ... (the part of the name before ``:``)."""
        return split_name(self.name)[0]

    @property
    def key(self) -> str:
        """The part of the name after ``:`` (the FQN)."""
        return split_name(self.name)[1]

    def to_json(self) -> dict:
        """Plain types."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict) -> "Slot":
        """Inverse of :meth:`to_json`."""
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


def _slot(name: str, ty) -> Slot:
    return Slot(name, tuple(int(d) for d in ty.shape), str(ty.dtype))


def signature(func: relax.Function) -> tuple[tuple[Slot, ...], tuple[Slot, ...]]:
    """Inputs and outputs of ``func`` as :class:`Slot` tuples, in calling order."""
    inputs = tuple(_slot(p.name, p.ty) for p in func.params)
    ret_ty = func.ret_ty
    fields = ret_ty.fields if isinstance(ret_ty, relax.TupleType) else [ret_ty]
    outputs = tuple(_slot(name, ty) for name, ty in zip(outputs_of(func), fields))
    return inputs, outputs


def rebuild(func: relax.Function, params: Sequence[relax.Var],
            outputs: Callable[[relax.BlockBuilder], Sequence[tuple[str, relax.Expr]]]) -> relax.Function:
    """``func`` with new inputs and a new flat output tuple (named), its other attributes kept.

    Parameters
    ----------
    func : relax.Function
        A function whose body is one dataflow block (as the importer and ``Gradient`` give).
    params : sequence of relax.Var
        All inputs of the new function, in order.
    outputs : callable
        Called with the block builder after ``func``'s bindings were emitted into the dataflow block;
        may emit more bindings (``bb.emit``) and returns the names and values of the outputs.
    """
    blocks = list(func.body.blocks)
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        raise ValueError("expected a function body of one dataflow block")
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else {}
    with bb.function("f", list(params), private=True):
        with bb.dataflow():
            for binding in blocks[0].bindings:
                bb.emit_normalized(binding)
            named = list(outputs(bb))
            results = [bb.emit_output(value) for _, value in named]
        bb.emit_func_output(relax.Tuple(results))  # a literal tuple, as Gradient wants
    attrs[OUTPUTS_ATTR] = [name for name, _ in named]
    built = bb.get()["f"].with_attr("global_symbol", "f")
    cleaned = relax.transform.CanonicalizeBindings()(tvm.IRModule({"f": built}))["f"]
    return cleaned.with_attrs(attrs)


def replace_function(mod: tvm.IRModule, name: str, func: relax.Function) -> tvm.IRModule:
    """``mod`` with the function ``name`` replaced (a public function keeps its global symbol)."""
    out = mod.clone()
    out[name] = func.with_attr("global_symbol", name)
    return out


def call_by_name(function, inputs: Sequence[Slot], outputs: Sequence[Slot], values: Mapping[str, Any]) -> dict[str, Any]:
    """Call a built function with its inputs given by name; return its outputs by name.

    Parameters
    ----------
    function : tvm.runtime.Function
        ``vm[name]`` of a built training module.
    inputs, outputs : sequence of Slot
        The function's signature (:func:`signature`).
    values : Mapping[str, tvm.runtime.Tensor]
        A tensor for every input name.

    Returns
    -------
    dict of str to tvm.runtime.Tensor
    """
    missing = [slot.name for slot in inputs if slot.name not in values]
    if missing:
        raise KeyError(f"no value for input {missing[0]}")
    results = function(*(values[slot.name] for slot in inputs))
    results = [results] if isinstance(results, tvm.runtime.Tensor) else list(results)
    return {slot.name: result for slot, result in zip(outputs, results)}
