"""Pattern + connectivity sparsity ("pattern+filter_balance" of the reference), 3x3 convs only.

1. Pattern: every kept 3x3 kernel keeps 4 of its 9 weights in one of the 8 shapes of
   :data:`schedules.schemes.pattern.PATTERN_SHAPES`, the one whose positions carry the largest L2 score.
2. Connectivity: every output filter keeps the same number of whole kernels (largest L2 first), so
   every filter does the same work.
Overall density = kept-kernel fraction x 4/9, taken as given (the reference converts it twice, so its
"90%" runs at about 77.5%). Refuses non-3x3 layers and densities above 4/9. Growth re-opens random
empty kernels of each filter, each with a random one of the 8 shapes.
"""

from __future__ import annotations

import torch

from mest.errors import SchemeError
from mest.schemes.base import Scheme, grow_random_units, keep_top_units
from schedules.schemes.pattern import NUM_PATTERNS, PATTERN, PATTERN_SHAPES, kernels_per_filter, pattern_ids


def _kernel_masks(pattern: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Pattern ids ``[O, I]`` and kept kernels ``[O, I]`` -> element mask ``[O, I, 3, 3]``."""
    return PATTERN_SHAPES[pattern.clamp(min=0)] & kept[..., None, None]


class PatternScheme(Scheme):
    """Best-of-8 kernel patterns plus filter-balanced connectivity pruning."""

    spec = PATTERN

    def prune(self, score: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
        self.check(mask.shape, density)
        out_channels, in_channels = mask.shape[:2]
        squared = (score.double() * mask).pow(2).reshape(out_channels, in_channels, 1, 9)
        pattern_energy = (squared * PATTERN_SHAPES.reshape(1, 1, NUM_PATTERNS, 9)).sum(dim=-1)
        current = pattern_ids(mask)
        # A kernel already in a pattern keeps it; any other non-empty kernel takes its best pattern.
        pattern = torch.where(current >= 0, current, pattern_energy.argmax(dim=-1))
        kernel_scores = pattern_energy.gather(-1, pattern.unsqueeze(-1)).squeeze(-1).sqrt()
        active = mask.reshape(out_channels, in_channels, 9).any(dim=-1)
        kept = keep_top_units(kernel_scores, active, kernels_per_filter(in_channels, density))
        return _kernel_masks(pattern, kept)

    def grow(self, mask: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
        self.check(mask.shape, density)
        out_channels, in_channels = mask.shape[:2]
        current = pattern_ids(mask)
        active = mask.reshape(out_channels, in_channels, 9).any(dim=-1)
        if bool((active & (current < 0)).any()):
            raise SchemeError("pattern growth needs a mask in pattern form; prune it first")
        grown = grow_random_units(active, kernels_per_filter(in_channels, density), generator)
        random_pattern = torch.randint(0, NUM_PATTERNS, current.shape, generator=generator)
        pattern = torch.where(active, current, random_pattern)
        return _kernel_masks(pattern, grown)
