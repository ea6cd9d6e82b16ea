"""The eight 4-of-9 kernel shapes of the pattern scheme, shared by the trainer and the kernels.

Order and shapes follow the MEST reference ("pattern+filter_balance"); rows top to bottom, X = kept:
``...|.XX|.XX``, ``...|XX.|XX.``, ``.XX|.XX|...``, ``XX.|XX.|...``,
``...|..X|XXX``, ``...|XXX|.X.``, ``.X.|.XX|.X.``, ``.X.|XX.|.X.``.
"""

from __future__ import annotations

import torch

_PATTERN_ROWS = (
    "...|.XX|.XX",
    "...|XX.|XX.",
    ".XX|.XX|...",
    "XX.|XX.|...",
    "...|..X|XXX",
    "...|XXX|.X.",
    ".X.|.XX|.X.",
    ".X.|XX.|.X.",
)

#: ``[8, 3, 3]`` bool tensor, ``PATTERN_SHAPES[p]`` is the kept positions of pattern ``p``.
PATTERN_SHAPES = torch.tensor(
    [[[c == "X" for c in row] for row in text.split("|")] for text in _PATTERN_ROWS], dtype=torch.bool
)
NUM_PATTERNS = PATTERN_SHAPES.shape[0]
WEIGHTS_PER_PATTERN = 4


def pattern_ids(kernel_masks: torch.Tensor) -> torch.Tensor:
    """Pattern id of each 3x3 kernel mask.

    Parameters
    ----------
    kernel_masks : torch.Tensor
        Bool tensor ``[..., 3, 3]``.

    Returns
    -------
    torch.Tensor
        int64 tensor ``[...]``: the pattern id (0-7) of each kernel, or -1 where the kernel is
        empty or is not one of the eight shapes.
    """
    flat = kernel_masks.reshape(-1, 1, 9)
    match = (flat == PATTERN_SHAPES.reshape(1, NUM_PATTERNS, 9)).all(dim=-1)
    ids = torch.where(match.any(dim=-1), match.to(torch.int64).argmax(dim=-1), torch.full_like(match[:, 0], -1, dtype=torch.int64))
    return ids.reshape(kernel_masks.shape[:-2])
