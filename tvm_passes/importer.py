"""Phase 1 of the pipeline: a PyTorch model becomes a Relax module, parameters kept as inputs.

The model is exported in eval mode with ``torch.export.export`` and translated by
``tvm.relax.frontend.torch.from_exported_program(..., keep_params_as_input=True)``. The frontend names
each parameter input after the exported program's placeholder (``p_layer1_0_conv1_weight``); the
exported program's graph signature maps that placeholder back to the parameter's FQN
(``layer1.0.conv1.weight``), which is how masks find their layer. Buffers (BN running statistics) are
already constants after the import.

What it refuses: a model that ``torch.export`` or the Relax frontend cannot take (an unsupported
operator, data-dependent control flow): :class:`~tvm_passes.errors.UnsupportedModelError` with the
frontend's reason on one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from .errors import UnsupportedModelError


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
    """

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    param_fqns: dict[str, str]
    input_shape: tuple[int, ...]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def import_model(model: torch.nn.Module, input_shape: tuple[int, ...]) -> ImportedModel:
    """Export ``model`` in eval mode and translate it to Relax.

    Parameters
    ----------
    model : torch.nn.Module
        The model (put in eval mode here; its weights are read, not changed).
    input_shape : tuple[int, ...]
        Static NCHW shape of the input the compiled module will take.

    Returns
    -------
    ImportedModel

    Raises
    ------
    UnsupportedModelError
        When ``torch.export`` or the Relax frontend cannot take the model.
    """
    model = model.eval()
    example = (torch.zeros(input_shape, dtype=torch.float32),)
    try:
        with torch.no_grad():
            exported = torch.export.export(model, example)
    except Exception as exc:  # torch.export raises many unrelated types; all mean "cannot export"
        raise UnsupportedModelError(f"torch.export cannot take the model: {_one_line(exc)}") from exc
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
    return ImportedModel(mod=mod, params=params, param_fqns=param_fqns, input_shape=tuple(input_shape))
