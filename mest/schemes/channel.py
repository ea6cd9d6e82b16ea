"""Channel sparsity: whole output filters, scored by L2 norm, regrown at random.

The paper names this scheme and the reference raises on it; here it is defined so that the dense
kernel of a smaller layer can run it: a pruned filter is all zero, and the trainer also masks the
BatchNorm channel that normalises it (see :func:`mest.models.conv_bn_pairs`).
"""

from __future__ import annotations

import torch

from mest.schemes.base import Scheme, grow_random_units, keep_top_units, units_at
from schedules.schemes.channel import CHANNEL


class ChannelScheme(Scheme):
    """Top-k output filters by the L2 norm of their scores; random growth of whole filters."""

    spec = CHANNEL
    masks_batch_norm = True

    def prune(self, score: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
        self.check(mask.shape, density)
        filters = mask.shape[0]
        unit_scores = score.double().reshape(filters, -1).pow(2).sum(dim=1).sqrt().reshape(1, -1)
        active = mask.reshape(filters, -1).any(dim=1).reshape(1, -1)
        kept = keep_top_units(unit_scores, active, units_at(density, filters))
        return kept.reshape(filters, 1, 1, 1).expand(mask.shape).clone()

    def grow(self, mask: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
        self.check(mask.shape, density)
        filters = mask.shape[0]
        active = mask.reshape(filters, -1).any(dim=1).reshape(1, -1)
        grown = grow_random_units(active, units_at(density, filters), generator)
        return grown.reshape(filters, 1, 1, 1).expand(mask.shape).clone()
