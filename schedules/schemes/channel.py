"""Channel sparsity: whole output filters are kept or pruned (with their BN channels, in ``mest``).

Format: the kept filters' indices ``kept [F]`` and their dense ``[F, I, 3, 3]`` weight, run as a
smaller dense conv (PyTorch's in training, TVM's dense schedule when compiled): no sparse kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from schedules.errors import SparseFormatError
from schedules.schemes.base import SchemeSpec
from schedules.sparse_format import KERNEL_TAPS, SparseFormat, as_index, check_capacity, pad, round_up

NAME = "channel"


@dataclass(frozen=True, eq=False)
class ChannelFormat(SparseFormat):
    """Whole output filters: ``kept [F]`` and values ``[F, I, 3, 3]`` (run by PyTorch's dense conv)."""

    scheme: ClassVar[str] = NAME
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("kept", "values"),
        "grad_input": ("kept", "values"),
        "grad_weight": ("kept",),
    }

    filters_used: int = 0

    def dense_index(self) -> torch.Tensor:
        in_channels = self.weight_shape[1]
        per_filter = in_channels * KERNEL_TAPS
        filters = self.capacity // per_filter
        kept = self.indices["kept"].astype(np.int64)
        index = kept[:, None] * per_filter + np.arange(per_filter)[None, :]
        index[np.arange(filters) >= self.filters_used] = -1
        return torch.from_numpy(index.reshape(-1))

    def compact_weight(self) -> torch.Tensor:
        """``[F, I, 3, 3]`` view of the values (padding filters included)."""
        return self.values.reshape(-1, *self.weight_shape[1:])


class ChannelSpec(SchemeSpec):
    """One whole output filter per unit."""

    name = NAME
    unit = "output filter"
    dense_kernel = True

    def unit_count(self, weight_shape: Sequence[int]) -> int:
        return int(weight_shape[0])

    def pack(self, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> ChannelFormat:
        out_channels, in_channels = weight.shape[:2]
        filter_mask = mask.reshape(out_channels, -1)
        kept_filters = filter_mask.any(dim=1)
        if not torch.equal(kept_filters, filter_mask.all(dim=1)):
            raise SparseFormatError("channel mask keeps part of an output filter; every filter must be all kept or all pruned")
        kept = kept_filters.nonzero(as_tuple=True)[0].numpy()
        per_filter = in_channels * KERNEL_TAPS
        nnz = len(kept) * per_filter
        slots = round_up(check_capacity(capacity, nnz), per_filter)
        filters = slots // per_filter
        if filters > out_channels:
            raise SparseFormatError(f"capacity {capacity} exceeds the dense weight's {out_channels * per_filter} weights")
        values = torch.zeros(filters, per_filter, dtype=torch.float32)
        values[: len(kept)] = weight.detach().reshape(out_channels, -1)[torch.from_numpy(kept)]
        indices = {"kept": as_index(pad(kept, filters), out_channels - 1)}
        return ChannelFormat(tuple(weight.shape), values.reshape(-1), nnz, indices, filters_used=len(kept))

    def random_mask(self, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        filters = torch.rand(shape[0], generator=generator) < density
        filters[0] = True
        return filters.reshape(-1, 1, 1, 1).expand(shape).clone()


CHANNEL = ChannelSpec()
