"""Compact formats of a masked ``[O, I, 3, 3]`` convolution weight, one per MEST scheme: :func:`pack`.

``pack(scheme, weight, mask, capacity=None)`` builds the format of the scheme's spec
(:mod:`schedules.schemes`); ``to_dense()`` gives back ``weight * mask`` exactly. What every format
shares (values, index arrays, buffers per kernel direction, capacity) is
:class:`schedules.sparse_format.SparseFormat`. Layouts (``O`` output filters, ``I`` input channels,
``tap = kh * 3 + kw``), each in its scheme's file:

- irregular: CSR over output filters, ``positions = i * 9 + tap``;
- block: 4x1 blocks (4 consecutive filters at one ``(i, tap)``), CSR over filter groups, values
  ``[block, 4]``;
- pattern: every filter keeps ``K`` kernels: ``channels[o * K + k]``, ``pattern_ids`` (0-7) and 4
  values per kernel in the pattern's row-major order;
- channel: the kept filters' indices and their dense ``[kept, I, 3, 3]`` weight.
"""

from __future__ import annotations

import torch

from schedules.errors import SparseFormatError
from schedules.schemes import SCHEMES, get_spec
from schedules.schemes.block import BlockFormat
from schedules.schemes.channel import ChannelFormat
from schedules.schemes.irregular import IrregularFormat
from schedules.schemes.pattern import PatternFormat
from schedules.sparse_format import DIRECTIONS, KERNEL_TAPS, SparseFormat, index_dtype, transfer

__all__ = [
    "DIRECTIONS", "KERNEL_TAPS", "SCHEMES", "BlockFormat", "ChannelFormat", "IrregularFormat", "PatternFormat",
    "SparseFormat", "index_dtype", "pack", "transfer",
]


def _check_inputs(weight: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise SparseFormatError("weight and mask must be torch tensors")
    if weight.dtype != torch.float32:
        raise SparseFormatError(f"weight must be float32, got {weight.dtype}")
    if mask.dtype != torch.bool:
        raise SparseFormatError(f"mask must be bool, got {mask.dtype}")
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise SparseFormatError(f"weight must be [O, I, 3, 3], got {list(weight.shape)}")
    if mask.shape != weight.shape:
        raise SparseFormatError(f"mask shape {list(mask.shape)} does not match weight shape {list(weight.shape)}")


def pack(scheme: str, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None = None) -> SparseFormat:
    """Compact format of ``weight * mask`` for ``scheme``.

    Parameters
    ----------
    scheme : str
        A name of :data:`SCHEMES` (``"irregular"``, ``"block"``, ``"pattern"``, ``"channel"``).
    weight : torch.Tensor
        Dense float32 ``[O, I, 3, 3]`` weight.
    mask : torch.Tensor
        Bool tensor of the same shape; True where a weight is kept.
    capacity : int, optional
        Value slots to allocate (an upper bound of non-zeros, rounded up to the scheme's unit:
        4 for block, ``4 * O`` for pattern, ``9 * I`` for channel). Defaults to the mask's count.

    Returns
    -------
    SparseFormat
        The format of the scheme.

    Raises
    ------
    SparseFormatError
        Wrong dtype, rank or shape, a mask the scheme cannot take, or a capacity below the count.
    """
    spec = get_spec(scheme)
    _check_inputs(weight, mask)
    return spec.pack(weight, mask, capacity)
