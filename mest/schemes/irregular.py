"""Irregular (unstructured) sparsity: the unit is one weight, kept by its importance score."""

from __future__ import annotations

import torch

from mest.schemes.base import Scheme, grow_random_units, keep_top_units, units_at
from schedules.schemes.irregular import IRREGULAR


class IrregularScheme(Scheme):
    """Per-element top-k of the importance score; growth of single random elements."""

    spec = IRREGULAR

    def prune(self, score: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
        self.check(mask.shape, density)
        keep = units_at(density, mask.numel())
        return keep_top_units(score.reshape(1, -1), mask.reshape(1, -1), keep).reshape(mask.shape)

    def grow(self, mask: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
        self.check(mask.shape, density)
        total = units_at(density, mask.numel())
        return grow_random_units(mask.reshape(1, -1), total, generator).reshape(mask.shape)
