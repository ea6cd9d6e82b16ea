"""Random masks of each scheme at a given density, for benchmarks, tuning and tests.

The trainer prunes by importance (``mest/schemes``); here only the structure and the density matter,
so masks are drawn at random with the scheme's constraints (4x1 blocks, balanced pattern kernels,
whole filters), always keeping at least one unit.
"""

from __future__ import annotations

import torch

from schedules.errors import SparseFormatError
from schedules.formats import BLOCK_SIZE, WEIGHTS_PER_PATTERN
from schedules.patterns import NUM_PATTERNS, PATTERN_SHAPES


def random_mask(scheme: str, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
    """A bool mask of ``scheme`` keeping about ``density`` of the weights.

    Parameters
    ----------
    scheme : str
        ``"irregular"``, ``"block"``, ``"pattern"`` or ``"channel"``.
    shape : tuple of int
        ``(O, I, 3, 3)``.
    density : float
        Fraction of weights kept (pattern: rounded to whole kernels per filter).
    generator : torch.Generator
        Source of randomness.

    Returns
    -------
    torch.Tensor
        Bool mask of ``shape``.
    """
    out_channels, in_channels = shape[:2]
    if scheme == "irregular":
        mask = torch.rand(shape, generator=generator) < density
        mask[0, 0, 1, 1] = True
        return mask
    if scheme == "block":
        if out_channels % BLOCK_SIZE:
            raise SparseFormatError(f"block scheme needs output channels divisible by {BLOCK_SIZE}, got {out_channels}")
        units = torch.rand(out_channels // BLOCK_SIZE, 1, in_channels, 3, 3, generator=generator) < density
        units[0, 0, 0, 1, 1] = True
        return units.expand(-1, BLOCK_SIZE, -1, -1, -1).reshape(shape).clone()
    if scheme == "pattern":
        kernels = min(in_channels, max(1, round(density * 9 / WEIGHTS_PER_PATTERN * in_channels)))
        mask = torch.zeros(shape, dtype=torch.bool)
        for o in range(out_channels):
            channels = torch.randperm(in_channels, generator=generator)[:kernels]
            mask[o, channels] = PATTERN_SHAPES[torch.randint(0, NUM_PATTERNS, (kernels,), generator=generator)]
        return mask
    if scheme == "channel":
        filters = torch.rand(out_channels, generator=generator) < density
        filters[0] = True
        return filters.reshape(-1, 1, 1, 1).expand(shape).clone()
    raise SparseFormatError(f"unknown scheme {scheme!r}")
