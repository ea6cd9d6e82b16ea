"""4x1 block sparsity ("free_block_prune_column_4" of the reference).

The weight is seen as ``[out, in*kh*kw]``; a unit is :data:`~schedules.schemes.block.BLOCK_SIZE`
consecutive output filters at one ``(in, kh, kw)`` position, scored by the L2 norm of its scores and
kept or grown whole. Refuses layers whose ``out_channels`` is not a multiple of the block size.
"""

from __future__ import annotations

import torch

from mest.schemes.base import Scheme, grow_random_units, keep_top_units, units_at
from schedules.schemes.block import BLOCK, BLOCK_SIZE


def _as_blocks(tensor: torch.Tensor) -> torch.Tensor:
    """``[out, in, kh, kw]`` -> ``[out // 4, 4, in*kh*kw]``."""
    return tensor.reshape(tensor.shape[0] // BLOCK_SIZE, BLOCK_SIZE, -1)


def _from_units(units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """bool ``[out // 4, in*kh*kw]`` -> the element mask of ``shape``."""
    return units.unsqueeze(1).expand(-1, BLOCK_SIZE, -1).reshape(shape)


class BlockScheme(Scheme):
    """Top-k 4x1 blocks by L2 norm; random growth of whole blocks."""

    spec = BLOCK

    def prune(self, score: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
        self.check(mask.shape, density)
        unit_scores = _as_blocks(score.double()).pow(2).sum(dim=1).sqrt().reshape(1, -1)
        active = _as_blocks(mask).any(dim=1).reshape(1, -1)
        keep = units_at(density, active.numel())
        kept = keep_top_units(unit_scores, active, keep)
        return _from_units(kept.reshape(mask.shape[0] // BLOCK_SIZE, -1), mask.shape)

    def grow(self, mask: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
        self.check(mask.shape, density)
        active = _as_blocks(mask).any(dim=1).reshape(1, -1)
        grown = grow_random_units(active, units_at(density, active.numel()), generator)
        return _from_units(grown.reshape(mask.shape[0] // BLOCK_SIZE, -1), mask.shape)
