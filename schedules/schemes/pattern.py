"""Pattern + connectivity sparsity ("pattern+filter_balance" of the reference), 3x3 convs only.

Every kept 3x3 kernel keeps 4 of its 9 weights in one of 8 shapes (:data:`PATTERN_SHAPES`, order and
shapes of the MEST reference; rows top to bottom, X = kept: ``...|.XX|.XX``, ``...|XX.|XX.``,
``.XX|.XX|...``, ``XX.|XX.|...``, ``...|..X|XXX``, ``...|XXX|.X.``, ``.X.|.XX|.X.``, ``.X.|XX.|.X.``),
and every output filter keeps the same number of kernels (:func:`kernels_per_filter`). The unit is one
3x3 kernel; overall density = kept-kernel fraction x 4/9.

Format: ``K`` kernels per filter: ``channels[o * K + k]``, ``pattern_ids`` (0-7) and 4 values per
kernel in the pattern's row-major order; the kernels walk one kernel (4 taps) per entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from schedules.errors import SparseFormatError
from schedules.schemes.base import SchemeSpec
from schedules.sparse_format import KERNEL_TAPS, SparseFormat, as_index, check_capacity, round_up, transposed_indices

if TYPE_CHECKING:
    from schedules.kernels.entries import Entries

NAME = "pattern"
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
#: ``[8, 4]`` uint8: the kept taps (``kh * 3 + kw``, row-major) of each pattern shape.
PATTERN_TAPS = np.stack(
    [np.flatnonzero(PATTERN_SHAPES[p].reshape(-1).numpy()) for p in range(NUM_PATTERNS)]
).astype(np.uint8)


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


def kernels_per_filter(in_channels: int, density: float) -> int:
    """Kernels each filter keeps so that the layer's density is ``density`` (at least one, at most all)."""
    return min(in_channels, max(1, round(density * KERNEL_TAPS * in_channels / WEIGHTS_PER_PATTERN)))


@dataclass(frozen=True, eq=False)
class PatternFormat(SparseFormat):
    """``K`` kernels per filter: ``channels [O*K]``, ``pattern_ids [O*K]``, values ``[O*K, 4]``.

    The first :attr:`kernels_used` slots of each filter hold its kernels; padding slots (capacity above
    the mask's kernel count) carry channel 0, pattern 0 and zero values, and no grad-input entry. The
    grad-input structure is per weight (like irregular), since a kernel's 4 taps feed different
    output parities of a stride-2 transposed conv.
    """

    scheme: ClassVar[str] = NAME
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("channels", "pattern_ids", "taps", "values"),
        "grad_input": ("t_row_ptr", "t_positions", "t_perm", "values"),
        "grad_weight": ("channels", "pattern_ids", "taps"),
    }

    kernels_used: int = 0

    @property
    def kernels_per_filter(self) -> int:
        """Kernel slots per output filter (``K`` of the capacity)."""
        return self.capacity // (self.weight_shape[0] * WEIGHTS_PER_PATTERN)

    def dense_index(self) -> torch.Tensor:
        out_channels, in_channels = self.weight_shape[:2]
        slots = self.kernels_per_filter
        kernel = np.arange(out_channels * slots)
        rows, k = kernel // slots, kernel % slots
        channels = self.indices["channels"].astype(np.int64)
        taps = PATTERN_TAPS[self.indices["pattern_ids"].astype(np.int64)].astype(np.int64)
        index = ((rows * in_channels + channels) * KERNEL_TAPS)[:, None] + taps
        index[k >= self.kernels_used] = -1
        return torch.from_numpy(index.reshape(-1))

    def entries(self, direction: str) -> Entries:
        from schedules.kernels.entries import Entries, buffer_specs, i32, transposed_walk  # TVM: only when built

        if direction == "grad_input":
            return transposed_walk(self, direction)
        out_channels, in_channels = self.weight_shape[:2]
        per_filter = self.kernels_per_filter
        return Entries(
            params=buffer_specs(self, direction),
            rows=out_channels,
            group=1,
            taps=WEIGHTS_PER_PATTERN,
            count=len(self.indices["channels"]),
            src_channels=in_channels,
            row_range=lambda b, row: (row * per_filter, row * per_filter + per_filter),
            channel=lambda b, e: i32(b["channels"][e]),
            tap=lambda b, e, t: i32(b["taps"][i32(b["pattern_ids"][e]), t]),
            value_slot=lambda b, e, t, g: e * WEIGHTS_PER_PATTERN + t,
        )


class PatternSpec(SchemeSpec):
    """One 3x3 kernel per unit, in one of 8 four-weight shapes, the same count per filter."""

    name = NAME
    unit = "3x3 kernel (4 of its 9 weights, in one of 8 shapes)"
    max_density = WEIGHTS_PER_PATTERN / KERNEL_TAPS

    def weight_refusal(self, weight_shape: Sequence[int]) -> str:
        refusal = super().weight_refusal(weight_shape)
        if not refusal and tuple(weight_shape[2:]) != (3, 3):
            refusal = f"pattern sparsity needs a 3x3 conv, got kernel {tuple(weight_shape[2:])}"
        return refusal

    def unit_count(self, weight_shape: Sequence[int]) -> int:
        return int(weight_shape[0]) * int(weight_shape[1])

    def pack(self, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> PatternFormat:
        out_channels, in_channels = weight.shape[:2]
        kernel_masks = mask.reshape(out_channels, in_channels, 3, 3)
        nonempty = kernel_masks.reshape(out_channels, in_channels, -1).any(dim=-1)
        ids = pattern_ids(kernel_masks)
        if bool(((ids < 0) & nonempty).any()):
            raise SparseFormatError("pattern mask has a 3x3 kernel that is not one of the 8 pattern shapes")
        counts = nonempty.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise SparseFormatError(f"pattern mask keeps different kernel counts per filter ({int(counts.min())}..{int(counts.max())})")
        used = int(counts[0])
        nnz = out_channels * used * WEIGHTS_PER_PATTERN
        unit = out_channels * WEIGHTS_PER_PATTERN
        slots = round_up(check_capacity(capacity, nnz), unit)
        per_filter = slots // unit
        rows, channels = (t.numpy() for t in nonempty.nonzero(as_tuple=True))
        kernel_ids = ids[nonempty].numpy()
        kernel = rows * per_filter + np.tile(np.arange(used), out_channels)
        all_channels = np.zeros(out_channels * per_filter, dtype=np.int64)
        all_ids = np.zeros(out_channels * per_filter, dtype=np.int64)
        all_channels[kernel], all_ids[kernel] = channels, kernel_ids
        values = torch.zeros(out_channels * per_filter, WEIGHTS_PER_PATTERN, dtype=torch.float32)
        flat = weight.detach().reshape(out_channels, in_channels, KERNEL_TAPS)
        taps = torch.from_numpy(PATTERN_TAPS[kernel_ids].astype(np.int64))
        values[torch.from_numpy(kernel)] = torch.gather(flat[torch.from_numpy(rows), torch.from_numpy(channels)], 1, taps)
        element_rows = np.repeat(rows, WEIGHTS_PER_PATTERN)
        element_positions = (channels[:, None] * KERNEL_TAPS + PATTERN_TAPS[kernel_ids].astype(np.int64)).reshape(-1)
        element_slots = (kernel[:, None] * WEIGHTS_PER_PATTERN + np.arange(WEIGHTS_PER_PATTERN)[None, :]).reshape(-1)
        indices = {
            "channels": as_index(all_channels, in_channels - 1),
            "pattern_ids": as_index(all_ids, NUM_PATTERNS - 1),
            "taps": PATTERN_TAPS.copy(),
            **transposed_indices(element_rows, element_positions, element_slots, slots, out_channels, in_channels),
        }
        return PatternFormat(tuple(weight.shape), values.reshape(-1), nnz, indices, kernels_used=used)

    def random_mask(self, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        out_channels, in_channels = shape[:2]
        kernels = kernels_per_filter(in_channels, density)
        mask = torch.zeros(shape, dtype=torch.bool)
        for o in range(out_channels):
            channels = torch.randperm(in_channels, generator=generator)[:kernels]
            mask[o, channels] = PATTERN_SHAPES[torch.randint(0, NUM_PATTERNS, (kernels,), generator=generator)]
        return mask


PATTERN = PatternSpec()
