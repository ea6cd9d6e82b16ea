"""4x1 block sparsity ("free_block_prune_column_4" of the reference): 4 consecutive output filters at
one ``(in, kh, kw)`` position are kept or pruned together.

Format: CSR over filter groups ``o // 4``, ``positions = i*9 + tap``, values ``[block, 4]``; the kernels
walk one block per entry and feed its 4 filters. Refuses weights whose ``out_channels`` is not a
multiple of :data:`BLOCK_SIZE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from schedules.errors import SparseFormatError
from schedules.schemes.base import SchemeSpec
from schedules.sparse_format import (KERNEL_TAPS, SparseFormat, as_index, check_capacity, pad, round_up, row_ptr,
                                     transposed_indices)

if TYPE_CHECKING:
    from schedules.kernels.entries import Entries

NAME = "block"
#: Consecutive output filters in one block (the "4" of 4x1).
BLOCK_SIZE = 4


@dataclass(frozen=True, eq=False)
class BlockFormat(SparseFormat):
    """4x1 blocks: CSR over filter groups ``o // 4``, ``positions = i*9 + tap``, values ``[block, 4]``."""

    scheme: ClassVar[str] = NAME
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("block_ptr", "positions", "values"),
        "grad_input": ("t_row_ptr", "t_positions", "t_perm", "values"),
        "grad_weight": ("block_ptr", "positions"),
    }

    def dense_index(self) -> torch.Tensor:
        out_channels, in_channels = self.weight_shape[:2]
        pointers = self.indices["block_ptr"].astype(np.int64)
        groups = np.repeat(np.arange(out_channels // BLOCK_SIZE), np.diff(pointers))
        blocks = self.nnz // BLOCK_SIZE
        rows = groups[:, None] * BLOCK_SIZE + np.arange(BLOCK_SIZE)[None, :]
        index = np.full(self.capacity, -1, dtype=np.int64)
        positions = self.indices["positions"][:blocks].astype(np.int64)
        index[: self.nnz] = (rows * in_channels * KERNEL_TAPS + positions[:, None]).reshape(-1)
        return torch.from_numpy(index)

    def entries(self, direction: str) -> Entries:
        from schedules.kernels.entries import position_walk, transposed_walk  # TVM: only when kernels are built

        if direction == "grad_input":
            return transposed_walk(self, direction)
        return position_walk(self, direction, "block_ptr", BLOCK_SIZE)


class BlockSpec(SchemeSpec):
    """4 consecutive output filters at one position per unit."""

    name = NAME
    unit = f"{BLOCK_SIZE}x1 block ({BLOCK_SIZE} consecutive output filters at one position)"

    def weight_refusal(self, weight_shape: Sequence[int]) -> str:
        refusal = super().weight_refusal(weight_shape)
        if not refusal and weight_shape[0] % BLOCK_SIZE:
            refusal = f"block sparsity needs out_channels divisible by {BLOCK_SIZE}, got {weight_shape[0]}"
        return refusal

    def unit_count(self, weight_shape: Sequence[int]) -> int:
        return int(np.prod(weight_shape)) // BLOCK_SIZE

    def pack(self, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> BlockFormat:
        out_channels, in_channels = weight.shape[:2]
        refusal = self.weight_refusal(weight.shape)
        if refusal:
            raise SparseFormatError(refusal)
        grouped = mask.reshape(out_channels // BLOCK_SIZE, BLOCK_SIZE, -1)
        kept = grouped.any(dim=1)
        if not torch.equal(kept, grouped.all(dim=1)):
            raise SparseFormatError("block mask keeps part of a 4x1 block; every block must be all kept or all pruned")
        groups, positions = (t.numpy() for t in kept.nonzero(as_tuple=True))
        nnz = len(groups) * BLOCK_SIZE
        slots = round_up(check_capacity(capacity, nnz), BLOCK_SIZE)
        block_slots = slots // BLOCK_SIZE
        values = torch.zeros(slots, dtype=torch.float32)
        dense = weight.detach().reshape(out_channels // BLOCK_SIZE, BLOCK_SIZE, -1)
        values[:nnz] = dense[torch.from_numpy(groups), :, torch.from_numpy(positions)].reshape(-1)
        rows = (groups[:, None] * BLOCK_SIZE + np.arange(BLOCK_SIZE)[None, :]).reshape(-1)
        indices = {
            "block_ptr": row_ptr(groups, out_channels // BLOCK_SIZE, block_slots),
            "positions": as_index(pad(positions, block_slots), in_channels * KERNEL_TAPS - 1),
            **transposed_indices(rows, np.repeat(positions, BLOCK_SIZE), np.arange(nnz), slots, out_channels, in_channels),
        }
        return BlockFormat(tuple(weight.shape), values, nnz, indices)

    def random_mask(self, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        refusal = self.weight_refusal(shape)
        if refusal:
            raise SparseFormatError(refusal)
        out_channels, in_channels = shape[:2]
        units = torch.rand(out_channels // BLOCK_SIZE, 1, in_channels, 3, 3, generator=generator) < density
        units[0, 0, 0, 1, 1] = True
        return units.expand(-1, BLOCK_SIZE, -1, -1, -1).reshape(shape).clone()


BLOCK = BlockSpec()
