"""Phase 1 of the pipelines: a PyTorch model becomes a Relax module, parameters kept as inputs.

The model is exported (in eval mode for :mod:`tvm_passes.pipeline`, in train mode for
:mod:`tvm_passes.training_pipeline`) with ``torch.export.export`` and translated by
``tvm.relax.frontend.torch.from_exported_program(..., keep_params_as_input=True)``. The frontend names
each parameter input after the exported program's placeholder (``p_layer1_0_conv1_weight``); the
exported program's graph signature maps that placeholder back to the parameter's FQN
(``layer1.0.conv1.weight``), which is how masks find their layer. Buffers (BN running statistics) are
already constants after the import; in train mode the import also says, for each training batch
norm, which running statistics it reads (:attr:`ImportedModel.batch_norms`), since the frontend freezes
them as constants and drops their updates (:class:`~tvm_passes.train_batch_norm.TrainBatchNorm` makes
them inputs and outputs again).

What it refuses: a model that ``torch.export`` or the Relax frontend cannot take (an unsupported
operator, data-dependent control flow): :class:`~tvm_passes.errors.UnsupportedModelError` with the
frontend's reason on one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class BatchNormBuffers:
    """The running statistics of one BatchNorm, by FQN (``layer1.0.bn1.running_mean``, ...)."""

    running_mean: str
    running_var: str
    num_batches_tracked: str


@dataclass
class ImportedModel:
    """A model imported into Relax.

    Attributes
    ----------
    mod : tvm.IRModule
        ``main(x, *params)`` in Relax, returning the logits (not a tuple).
    params : dict[str, numpy.ndarray]
        Value of each parameter input of ``main``, by input name.
    param_fqns : dict[str, str]
        Input name -> FQN of the PyTorch parameter.
    input_shape : tuple[int, ...]
        Static shape of ``x`` (NCHW).
    batch_norms : dict[str, BatchNormBuffers]
        Train mode only: name of each batch norm's ``gamma`` input -> its running statistics.
    """

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    param_fqns: dict[str, str]
    input_shape: tuple[int, ...]
    batch_norms: dict[str, BatchNormBuffers] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _batch_norm_buffers(exported) -> dict[str, BatchNormBuffers]:
    """``gamma`` placeholder -> running statistics of each batch norm of a train-mode export."""
    to_buffer = exported.graph_signature.inputs_to_buffers
    found = {}
    for node in exported.graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        gamma, mean, var = node.args[1], node.args[3], node.args[4]
        if not all(isinstance(a, torch.fx.Node) for a in (gamma, mean, var)) or mean.name not in to_buffer:
            raise UnsupportedModelError(f"batch norm {node.name} has no affine parameters or no running statistics")
        mean_fqn = to_buffer[mean.name]
        prefix = mean_fqn.rsplit(".", 1)[0]
        found[gamma.name] = BatchNormBuffers(mean_fqn, to_buffer[var.name], f"{prefix}.num_batches_tracked")
    return found


def import_model(model: torch.nn.Module, input_shape: tuple[int, ...], train: bool = False) -> ImportedModel:
    """Export ``model`` and translate it to Relax.

    Parameters
    ----------
    model : torch.nn.Module
        The model (put in eval or train mode here; its weights are read, not changed).
    input_shape : tuple[int, ...]
        Static NCHW shape of the input the compiled module will take.
    train : bool
        Export in train mode (batch norms on batch statistics; see :attr:`ImportedModel.batch_norms`).

    Returns
    -------
    ImportedModel

    Raises
    ------
    UnsupportedModelError
        When ``torch.export`` or the Relax frontend cannot take the model.
    """
    was_training = model.training
    model.train(train)
    example = (torch.zeros(input_shape, dtype=torch.float32),)
    try:
        with torch.no_grad():
            exported = torch.export.export(model, example)
    except Exception as exc:  # torch.export raises many unrelated types; all mean "cannot export"
        raise UnsupportedModelError(f"torch.export cannot take the model: {_one_line(exc)}") from exc
    finally:
        model.train(was_training)
    try:
        mod = from_exported_program(exported, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    except Exception as exc:  # the frontend raises AssertionError/ValueError/KeyError for unknown ops
        raise UnsupportedModelError(f"the Relax frontend cannot import the model: {_one_line(exc)}") from exc
    mod, detached = relax.frontend.detach_params(mod)
    names = [p.name for p in mod["main"].params[1:]]
    values = detached.get("main", [])
    params = {name: value.numpy() for name, value in zip(names, values)}
    to_fqn = exported.graph_signature.inputs_to_parameters
    param_fqns = {name: to_fqn[name] for name in names if name in to_fqn}
    batch_norms = _batch_norm_buffers(exported) if train else {}
    return ImportedModel(mod=mod, params=params, param_fqns=param_fqns, input_shape=tuple(input_shape),
                         batch_norms=batch_norms)
