"""The ``tvm`` backend: sparse layers held compactly and run by the TVM kernels in both directions.

Each sparse conv becomes a :class:`schedules.layer.SparseConv2d` whose only parameter is its compact
values; its momentum is compact too, and the gradient exists only at kept positions. Between
mutations no dense weight, dense gradient, dense momentum or dense mask of a sparse layer exists.
At a mutation a layer is expanded just long enough to score it, pruned and grown by the scheme,
and re-packed into buffers sized once for the largest upper bound of the run (Soft Memory Bound's
first phase), so a mutation never changes a kernel's shapes and the kernel cache always answers:
the price is that under EM&S the last phases keep a few empty slots (measured in the run summary).

Like ``torch.ao``'s ``convert``, :func:`to_compact` swaps modules of the model before the optimizer is
built: the compact values take the dense weight's place in ``model.parameters()``, so the optimizer
built afterwards has the masked model's slots and nothing edits its parameter groups. Checkpoints stay
backend-independent: :func:`dense_equivalent_state` writes the dense weights and momentum that the
``torch-mask`` backend would hold; the model state loads before the conversion, and the optimizer state
through :func:`compact_optimizer_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mest.errors import ConfigError
from mest.models import build_model
from mest.schemes import get_scheme
from mest.sparsity import MaskedConv, SparseState, check_profile


def _sparse_conv_class() -> type:
    from schedules.layer import SparseConv2d  # imports TVM (seconds): only when this backend runs

    return SparseConv2d


class CompactConv:
    """A sparse conv held as a ``SparseConv2d`` (compact values, indices, compact momentum)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def mask(self) -> torch.Tensor:
        return self.module.mask()

    def nnz(self) -> int:
        return int(self.module.format.nnz)

    def dense_weight(self) -> torch.Tensor:
        return self.module.to_dense()

    def dense_grad(self) -> torch.Tensor | None:
        grad = self.module.values.grad
        return None if grad is None else self.module.format.with_values(grad.detach()).to_dense()

    @torch.no_grad()
    def mutate(self, survivors: torch.Tensor, mask: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        values = self.module.values
        fmt = self.module.format
        state = optimizer.state.get(values, {})
        momentum = state.get("momentum_buffer")
        dense_momentum = None if momentum is None else fmt.with_values(momentum).to_dense() * survivors
        capacity = max(int(mask.sum()), fmt.capacity)  # kept unless the mask outgrows it
        self.module.repack(fmt.to_dense() * survivors, mask, capacity=capacity)
        values.grad = None
        if dense_momentum is not None:
            state["momentum_buffer"] = self.module.format.gather(dense_momentum)

    def apply_mask(self) -> None:
        """Nothing to do: a compact layer has no positions outside its mask."""

    def mask_grad(self) -> None:
        """Nothing to do: the gradient exists only at kept positions."""

    def state_bytes(self) -> int:
        fmt = self.module.format
        return fmt.nbytes + 2 * fmt.values.numel() * fmt.values.element_size()  # + gradient, momentum


def _parent(model: nn.Module, module_name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = module_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _slots(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """Index of each parameter in the optimizer's state dict, by ``id``."""
    return {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}


def _refusal(model: nn.Module, fqn: str) -> str:
    """Why the tvm and compiled backends cannot hold the parameter ``fqn`` compactly (``""`` when they can)."""
    module_name, _, leaf = fqn.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if isinstance(module, nn.Conv2d) and leaf == "weight":
        if module.kernel_size == (3, 3) and module.padding == (1, 1) and module.bias is None and module.stride[0] in (1, 2):
            return ""
        what = f"a {module.kernel_size[0]}x{module.kernel_size[1]} conv"
    else:
        what = f"the {leaf} of a {type(module).__name__}"
    return (f"the tvm and compiled backends cannot train {fqn} ({what}) sparse: it runs sparse 3x3 convs (padding 1, stride 1 "
            "or 2, no bias); keep that layer dense in the profile, or train with --backend torch-mask")


def check_compact_layers(model_name: str, profile: dict[str, float], profile_path: Path, scheme: str) -> None:
    """Refuse, before any data is loaded, a profile making sparse a layer the tvm backend cannot hold.

    Parameters
    ----------
    model_name : str
        The model of the run (its layer shapes do not depend on the data).
    profile : dict of str to float
        The run's profile, as :func:`mest.sparsity.read_profile` read it.
    profile_path : Path
        Its ``--profile`` JSON file (named by the errors).
    scheme : str
        The run's scheme (a layer it cannot take is refused first, as on any backend).

    Raises
    ------
    ConfigError
        Naming the first such layer and the backend that can train it (``torch-mask``).
    SchemeError
        For a layer the scheme cannot take.
    """
    model = build_model(model_name, num_classes=10, in_channels=3)
    params = dict(model.named_parameters())
    for fqn in check_profile(profile, model, profile_path):
        get_scheme(scheme).validate(params[fqn].shape)
        refusal = _refusal(model, fqn)
        if refusal:
            raise ConfigError(refusal)


@torch.no_grad()
def replace_sparse_convs(model: nn.Module, sparse: SparseState, capacity: dict[str, int] | None,
                         make_module: Callable[..., nn.Module], layer_class: type,
                         batch_size: int | None = None) -> None:
    """Replace every masked sparse conv of ``model`` by a compact module, in place.

    Call it before building the optimizer: each compact ``values`` parameter stands where the dense
    weight stood in ``model.parameters()``.

    Parameters
    ----------
    model : torch.nn.Module
        The masked model.
    sparse : SparseState
        Its sparse layers; each masked conv's entry becomes a ``layer_class``.
    capacity : dict of str to int, optional
        Value slots per layer FQN (the largest non-zero count the run will reach); the current
        count by default.
    make_module : callable
        ``(weight, mask, scheme, stride, capacity, batch_size) -> module`` with ``values``.
    layer_class : type
        The :class:`CompactConv` (or subclass) holding the module.
    batch_size : int, optional
        The batch the kernels are built for (smaller batches are padded to it).

    Raises
    ------
    ConfigError
        A sparse layer is not a conv the compact layers take (named, with the backend that can).
    """
    for fqn, layer in list(sparse.layers.items()):
        if not isinstance(layer, MaskedConv):
            continue
        refusal = _refusal(model, fqn)
        if refusal:
            raise ConfigError(refusal)
        module_name = fqn.rsplit(".", 1)[0]
        conv = model.get_submodule(module_name)
        mask = layer.mask()
        slots = max(int(mask.sum()), (capacity or {}).get(fqn, 0))
        compact = make_module(conv.weight.detach(), mask, sparse.schemes[fqn], conv.stride[0], slots, batch_size)
        parent, child = _parent(model, module_name)
        setattr(parent, child, compact)
        sparse.layers[fqn] = layer_class(compact)


def _sparse_conv(weight: torch.Tensor, mask: torch.Tensor, scheme: str, stride: int, capacity: int,
                 batch_size: int | None) -> nn.Module:
    return _sparse_conv_class()(weight, mask, scheme, stride=stride, capacity=capacity, batch_size=batch_size)


def to_compact(model: nn.Module, sparse: SparseState, capacity: dict[str, int] | None = None,
               batch_size: int | None = None) -> None:
    """Replace every masked sparse conv of ``model`` by a compact ``SparseConv2d``, in place (the
    ``tvm`` backend; see :func:`replace_sparse_convs`, whose parameters these are)."""
    replace_sparse_convs(model, sparse, capacity, _sparse_conv, CompactConv, batch_size)


@torch.no_grad()
def dense_equivalent_state(model: nn.Module, sparse: SparseState,
                           optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and optimizer state dicts as the ``torch-mask`` backend would hold them.

    Compact values become the dense ``<module>.weight`` (zero outside the mask) and their momentum a
    dense momentum; a masked model's state passes through unchanged.
    """
    model_state = model.state_dict()
    optimizer_state = optimizer.state_dict()
    slot = _slots(optimizer)
    for fqn, layer in sparse.layers.items():
        if not isinstance(layer, CompactConv):
            continue
        module_name = fqn.rsplit(".", 1)[0]
        model_state.pop(f"{module_name}.values")
        model_state[fqn] = layer.dense_weight()
        index = slot[id(layer.module.values)]
        entry = optimizer_state["state"].get(index)
        if entry is not None and "momentum_buffer" in entry:  # a copy: the entry is the live state
            dense = layer.module.format.with_values(entry["momentum_buffer"]).to_dense()
            optimizer_state["state"][index] = {**entry, "momentum_buffer": dense}
    return model_state, optimizer_state


@torch.no_grad()
def compact_optimizer_state(optimizer_state: dict, sparse: SparseState, optimizer: torch.optim.Optimizer) -> dict:
    """A dense-equivalent optimizer state dict (a checkpoint's) for the optimizer of a compact model.

    The inverse of the optimizer half of :func:`dense_equivalent_state`: the dense momentum of each
    compact layer is gathered at its kept positions; everything else passes through.

    Parameters
    ----------
    optimizer_state : dict
        ``state_dict()`` of the masked model's optimizer (same slots).
    sparse : SparseState
        The layers after :func:`to_compact`.
    optimizer : torch.optim.Optimizer
        The optimizer of the compact model, built after :func:`to_compact`.

    Returns
    -------
    dict
        A state dict ``optimizer.load_state_dict`` takes.
    """
    slot = _slots(optimizer)
    state = dict(optimizer_state["state"])
    for layer in sparse.layers.values():
        if not isinstance(layer, CompactConv):
            continue
        index = slot[id(layer.module.values)]
        entry = state.get(index)
        if entry is not None and "momentum_buffer" in entry:
            state[index] = {**entry, "momentum_buffer": layer.module.format.gather(entry["momentum_buffer"])}
    return {**optimizer_state, "state": state}
