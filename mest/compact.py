"""The ``tvm`` backend: sparse layers held compactly and run by the TVM kernels in both directions.

Each sparse conv becomes a :class:`schedules.layer.SparseConv2d` whose only parameter is its compact
values; its momentum is compact too, and the gradient exists only at kept positions. Between
mutations no dense weight, dense gradient, dense momentum or dense mask of a sparse layer exists.
At a mutation a layer is expanded just long enough to score it, pruned and grown by the scheme,
and re-packed into buffers sized once for the largest upper bound of the run (Soft Memory Bound's
first phase), so a mutation never changes a kernel's shapes and the kernel cache always answers:
the price is that under EM&S the last phases keep a few empty slots (measured in the run summary).

Checkpoints stay backend-independent: :func:`dense_equivalent_state` writes the dense weights and
momentum that the ``torch-mask`` backend would hold, and :func:`to_compact` packs them again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mest.sparsity import MaskedConv, SparseState


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


def _swap_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter,
                    momentum: torch.Tensor | None) -> None:
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new
    optimizer.state.pop(old, None)
    if momentum is not None:
        optimizer.state[new] = {"momentum_buffer": momentum}


@torch.no_grad()
def replace_sparse_convs(model: nn.Module, sparse: SparseState, optimizer: torch.optim.Optimizer,
                         capacity: dict[str, int] | None, make_module: Callable[..., nn.Module],
                         layer_class: type, batch_size: int | None = None) -> None:
    """Replace every masked sparse conv of ``model`` by a compact module, in place.

    The optimizer keeps its parameter slots: the dense weight's slot takes the compact values, and
    its momentum is gathered at the kept positions.

    Parameters
    ----------
    capacity : dict of str to int, optional
        Value slots per layer FQN (the largest non-zero count the run will reach); the current
        count by default.
    make_module : callable
        ``(weight, mask, scheme, stride, capacity, batch_size) -> module`` with ``values``.
    layer_class : type
        The :class:`mest.sparsity.SparseConv` holding the module (a :class:`CompactConv`).
    batch_size : int, optional
        The batch the kernels are built for (smaller batches are padded to it).
    """
    for fqn, layer in list(sparse.layers.items()):
        if not isinstance(layer, MaskedConv):
            continue
        module_name = fqn.rsplit(".", 1)[0]
        conv = model.get_submodule(module_name)
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.bias is not None:
            raise NotImplementedError(f"compact layers are 3x3 convs with padding 1 and no bias; {module_name} is not one")
        mask = layer.mask()
        slots = max(int(mask.sum()), (capacity or {}).get(fqn, 0))
        compact = make_module(conv.weight.detach(), mask, sparse.schemes[fqn], conv.stride[0], slots, batch_size)
        momentum = optimizer.state.get(conv.weight, {}).get("momentum_buffer")
        _swap_parameter(optimizer, conv.weight, compact.values,
                        None if momentum is None else compact.format.gather(momentum))
        parent, child = _parent(model, module_name)
        setattr(parent, child, compact)
        sparse.layers[fqn] = layer_class(compact)


def _sparse_conv(weight: torch.Tensor, mask: torch.Tensor, scheme: str, stride: int, capacity: int,
                 batch_size: int | None) -> nn.Module:
    return _sparse_conv_class()(weight, mask, scheme, stride=stride, capacity=capacity, batch_size=batch_size)


def to_compact(model: nn.Module, sparse: SparseState, optimizer: torch.optim.Optimizer,
               capacity: dict[str, int] | None = None, batch_size: int | None = None) -> None:
    """Replace every masked sparse conv of ``model`` by a compact ``SparseConv2d`` (see
    :func:`replace_sparse_convs`)."""
    replace_sparse_convs(model, sparse, optimizer, capacity, _sparse_conv, CompactConv, batch_size)


@torch.no_grad()
def dense_equivalent_state(model: nn.Module, sparse: SparseState,
                           optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and optimizer state dicts as the ``torch-mask`` backend would hold them.

    Compact values become the dense ``<module>.weight`` (zero outside the mask) and their momentum a
    dense momentum; a masked model's state passes through unchanged.
    """
    model_state = model.state_dict()
    optimizer_state = optimizer.state_dict()
    slot = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
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
