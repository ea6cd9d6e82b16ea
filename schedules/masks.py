"""Random masks of each scheme at a given density, for benchmarks, tuning and tests.

The trainer prunes by importance (``mest/schemes``); here only the structure and the density matter,
so masks are drawn at random with the scheme's constraints (its spec's ``random_mask``: 4x1 blocks,
balanced pattern kernels, whole filters), always keeping at least one unit.
"""

from __future__ import annotations

import torch

from schedules.schemes import get_spec


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

    Raises
    ------
    SparseFormatError
        For an unknown scheme or a shape the scheme cannot take.
    """
    return get_spec(scheme).random_mask(shape, density, generator)
