"""Irregular (unstructured) sparsity: the unit is one weight.

Format: CSR over output filters, ``row_ptr [O+1]``, ``positions = i*9 + tap``, one value per weight;
the kernels walk one weight per entry. Any weight of rank >= 2 can be irregular (a classifier too, for
the masked dense backend); the kernels take 3x3 convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from schedules.schemes.base import SchemeSpec
from schedules.sparse_format import (KERNEL_TAPS, SparseFormat, as_index, check_capacity, pad, row_ptr,
                                     transposed_indices)

if TYPE_CHECKING:
    from schedules.kernels.entries import Entries

NAME = "irregular"


@dataclass(frozen=True, eq=False)
class IrregularFormat(SparseFormat):
    """CSR over output filters: ``row_ptr [O+1]``, ``positions = i*9 + tap``, values per weight."""

    scheme: ClassVar[str] = NAME
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("row_ptr", "positions", "values"),
        "grad_input": ("t_row_ptr", "t_positions", "t_perm", "values"),
        "grad_weight": ("row_ptr", "positions"),
    }

    def dense_index(self) -> torch.Tensor:
        out_channels, in_channels = self.weight_shape[:2]
        pointers = self.indices["row_ptr"].astype(np.int64)
        rows = np.repeat(np.arange(out_channels), np.diff(pointers))
        index = np.full(self.capacity, -1, dtype=np.int64)
        index[: self.nnz] = rows * in_channels * KERNEL_TAPS + self.indices["positions"][: self.nnz].astype(np.int64)
        return torch.from_numpy(index)

    def entries(self, direction: str) -> Entries:
        from schedules.kernels.entries import position_walk, transposed_walk  # TVM: only when kernels are built

        return transposed_walk(self, direction) if direction == "grad_input" else position_walk(self, direction, "row_ptr", 1)


class IrregularSpec(SchemeSpec):
    """One weight per unit."""

    name = NAME
    unit = "one weight"

    def weight_refusal(self, weight_shape: Sequence[int]) -> str:
        if len(weight_shape) < 2:
            return f"irregular sparsity needs a weight of rank >= 2, got {tuple(weight_shape)}"
        return ""

    def unit_count(self, weight_shape: Sequence[int]) -> int:
        return int(np.prod(weight_shape))

    def pack(self, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> IrregularFormat:
        out_channels, in_channels = weight.shape[:2]
        flat_mask = mask.reshape(out_channels, -1)
        rows, positions = (t.numpy() for t in flat_mask.nonzero(as_tuple=True))
        nnz = len(rows)
        slots = max(check_capacity(capacity, nnz), 1)
        values = torch.zeros(slots, dtype=torch.float32)
        values[:nnz] = weight.detach().reshape(out_channels, -1)[flat_mask]
        indices = {
            "row_ptr": row_ptr(rows, out_channels, slots),
            "positions": as_index(pad(positions, slots), in_channels * KERNEL_TAPS - 1),
            **transposed_indices(rows, positions, np.arange(nnz), slots, out_channels, in_channels),
        }
        return IrregularFormat(tuple(weight.shape), values, nnz, indices)

    def random_mask(self, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        mask = torch.rand(shape, generator=generator) < density
        mask[0, 0, 1, 1] = True
        return mask


IRREGULAR = IrregularSpec()
