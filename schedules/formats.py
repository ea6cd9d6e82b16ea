"""Compact formats of a masked ``[O, I, 3, 3]`` convolution weight, one per MEST scheme.

``pack(scheme, weight, mask, capacity=None)`` builds the format; ``to_dense()`` gives back
``weight * mask`` exactly. Values are float32 torch tensors (the trainable parameter of
:class:`schedules.layer.SparseConv2d`); indices are numpy arrays in the smallest integer type that fits
(``uint8``, ``uint16`` or ``int32``). The kernels take the arrays of :meth:`SparseFormat.buffers`
for a direction, in order, as runtime arguments, so a new mask is a re-pack and never a code change.

Layouts (``O`` output filters, ``I`` input channels, ``tap = kh * 3 + kw``):

- irregular: CSR over output filters, ``positions = i * 9 + tap``.
- block: 4x1 blocks (4 consecutive filters at one ``(i, tap)``), CSR over filter groups ``o // 4``,
  values ``[block, 4]``.
- pattern: every filter keeps ``K`` kernels: ``channels[o * K + k]``, ``pattern_ids`` (0-7, see
  :mod:`schedules.patterns`) and 4 values per kernel in the pattern's row-major order.
- channel: the kept filters' indices and their dense ``[kept, I, 3, 3]`` weight.

The grad-input kernels read the transposed structure (``t_*`` arrays: CSR over input channels with
flipped taps and a permutation into ``values``, its rows further split by the output parity a tap
feeds at stride 2), built at pack time from the same mask.

``capacity`` (number of value slots, rounded up to the scheme's unit) sizes the buffers for an upper
bound of non-zeros (Soft Memory Bound): padding slots hold zero values, belong to no output, and
:meth:`SparseFormat.valid_slots` tells them apart, so a kernel keyed by capacity serves every mask up
to that bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch

from schedules.errors import SparseFormatError
from schedules.patterns import NUM_PATTERNS, PATTERN_SHAPES, WEIGHTS_PER_PATTERN, pattern_ids

SCHEMES = ("irregular", "block", "pattern", "channel")
DIRECTIONS = ("forward", "grad_input", "grad_weight")
BLOCK_SIZE = 4
KERNEL_TAPS = 9

#: ``[8, 4]`` uint8: the kept taps (``kh * 3 + kw``, row-major) of each pattern shape.
PATTERN_TAPS = np.stack(
    [np.flatnonzero(PATTERN_SHAPES[p].reshape(-1).numpy()) for p in range(NUM_PATTERNS)]
).astype(np.uint8)


def index_dtype(max_value: int) -> np.dtype:
    """Smallest integer dtype holding ``0..max_value``.

    Parameters
    ----------
    max_value : int
        Largest value that will be stored.

    Returns
    -------
    numpy.dtype
        ``uint8``, ``uint16`` or ``int32``.
    """
    for dtype in (np.uint8, np.uint16):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    if max_value <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    raise SparseFormatError(f"index {max_value} does not fit in int32")


def _as_index(values: np.ndarray | torch.Tensor, max_value: int) -> np.ndarray:
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.ascontiguousarray(array.astype(index_dtype(max_value)))


def _row_ptr(rows: np.ndarray, num_rows: int, max_value: int) -> np.ndarray:
    counts = np.bincount(rows.astype(np.int64), minlength=num_rows)
    return _as_index(np.concatenate([[0], np.cumsum(counts)]), max_value)


def _check_inputs(scheme: str, weight: torch.Tensor, mask: torch.Tensor) -> None:
    if scheme not in SCHEMES:
        raise SparseFormatError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
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


def _check_capacity(capacity: int | None, nnz: int) -> int:
    if capacity is None:
        return nnz
    if capacity < nnz:
        raise SparseFormatError(f"capacity {capacity} is below the mask's {nnz} non-zeros")
    return int(capacity)


def _round_up(value: int, unit: int) -> int:
    return max(unit, -(-value // unit) * unit)


@dataclass(frozen=True, eq=False)
class SparseFormat:
    """Base of the compact formats: values, index arrays, and the dense shape they come from.

    Attributes
    ----------
    weight_shape : tuple of int
        ``(O, I, 3, 3)`` of the dense weight.
    values : torch.Tensor
        float32, 1-D, ``capacity`` slots (padding slots hold 0).
    nnz : int
        Number of kept weights (without padding).
    indices : dict of str to numpy.ndarray
        Index arrays by buffer name.
    """

    scheme: ClassVar[str] = ""
    #: buffer names per direction, values included, in the kernels' argument order.
    layout: ClassVar[dict[str, tuple[str, ...]]] = {}

    weight_shape: tuple[int, int, int, int]
    values: torch.Tensor
    nnz: int
    indices: dict[str, np.ndarray] = field(repr=False)

    @property
    def capacity(self) -> int:
        """Number of value slots (kept weights plus padding)."""
        return int(self.values.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of values plus every index array this format holds."""
        return int(self.values.numel() * self.values.element_size()) + sum(int(a.nbytes) for a in self.indices.values())

    def buffers(self, direction: str = "forward") -> dict[str, np.ndarray | torch.Tensor]:
        """Runtime buffers of the kernel of ``direction``, in argument order.

        Parameters
        ----------
        direction : str
            ``"forward"``, ``"grad_input"`` or ``"grad_weight"``.

        Returns
        -------
        dict of str to numpy.ndarray or torch.Tensor
            ``values`` is the torch tensor, the rest are numpy index arrays.
        """
        if direction not in self.layout:
            raise SparseFormatError(f"scheme {self.scheme!r} has no {direction} kernel buffers")
        return {name: (self.values if name == "values" else self.indices[name]) for name in self.layout[direction]}

    def dense_index(self) -> torch.Tensor:
        """Flat index into the dense weight of each value slot, -1 for padding slots."""
        raise NotImplementedError

    def valid_slots(self) -> torch.Tensor:
        """Bool tensor over value slots: True where the slot holds a kept weight."""
        return self.dense_index() >= 0

    def to_dense(self) -> torch.Tensor:
        """Dense ``[O, I, 3, 3]`` float32 weight, zero outside the mask (exactly ``weight * mask``)."""
        index = self.dense_index()
        dense = torch.zeros(int(np.prod(self.weight_shape)), dtype=torch.float32)
        valid = index >= 0
        dense[index[valid]] = self.values.detach()[valid]
        return dense.reshape(self.weight_shape)

    def to_mask(self) -> torch.Tensor:
        """Bool ``[O, I, 3, 3]`` mask of the kept positions."""
        index = self.dense_index()
        mask = torch.zeros(int(np.prod(self.weight_shape)), dtype=torch.bool)
        mask[index[index >= 0]] = True
        return mask.reshape(self.weight_shape)

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """Values of a dense weight at this format's slots (padding slots 0), for an unchanged mask.

        Parameters
        ----------
        weight : torch.Tensor
            Dense float32 weight of shape ``weight_shape``.

        Returns
        -------
        torch.Tensor
            float32 tensor of ``capacity`` values.
        """
        if tuple(weight.shape) != self.weight_shape:
            raise SparseFormatError(f"weight shape {list(weight.shape)} does not match format shape {list(self.weight_shape)}")
        index = self.dense_index()
        values = torch.zeros(self.capacity, dtype=torch.float32)
        valid = index >= 0
        values[valid] = weight.detach().reshape(-1).to(torch.float32)[index[valid]]
        return values

    def with_values(self, values: torch.Tensor) -> "SparseFormat":
        """The same indices with new values (no copy of the index arrays).

        Parameters
        ----------
        values : torch.Tensor
            float32 tensor of ``capacity`` values.

        Returns
        -------
        SparseFormat
            A format of the same class sharing this one's index arrays.
        """
        if values.dtype != torch.float32 or values.shape != self.values.shape:
            raise SparseFormatError(f"values must be float32 of shape {list(self.values.shape)}, got {values.dtype} {list(values.shape)}")
        return replace(self, values=values)

    def repack(self, weight: torch.Tensor) -> "SparseFormat":
        """Re-pack the values of a dense weight for an unchanged mask (cheap: a gather)."""
        return self.with_values(self.gather(weight))


@dataclass(frozen=True, eq=False)
class IrregularFormat(SparseFormat):
    """CSR over output filters: ``row_ptr [O+1]``, ``positions = i*9 + tap``, values per weight."""

    scheme: ClassVar[str] = "irregular"
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("row_ptr", "positions", "values"),
        "grad_input": ("t_row_ptr", "t_positions", "t_perm", "values"),
        "grad_weight": ("row_ptr", "positions"),
    }

    def dense_index(self) -> torch.Tensor:
        out_channels, in_channels = self.weight_shape[:2]
        row_ptr = self.indices["row_ptr"].astype(np.int64)
        rows = np.repeat(np.arange(out_channels), np.diff(row_ptr))
        index = np.full(self.capacity, -1, dtype=np.int64)
        index[: self.nnz] = rows * in_channels * KERNEL_TAPS + self.indices["positions"][: self.nnz].astype(np.int64)
        return torch.from_numpy(index)


@dataclass(frozen=True, eq=False)
class BlockFormat(SparseFormat):
    """4x1 blocks: CSR over filter groups ``o // 4``, ``positions = i*9 + tap``, values ``[block, 4]``."""

    scheme: ClassVar[str] = "block"
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("block_ptr", "positions", "values"),
        "grad_input": ("t_row_ptr", "t_positions", "t_perm", "values"),
        "grad_weight": ("block_ptr", "positions"),
    }

    def dense_index(self) -> torch.Tensor:
        out_channels, in_channels = self.weight_shape[:2]
        block_ptr = self.indices["block_ptr"].astype(np.int64)
        groups = np.repeat(np.arange(out_channels // BLOCK_SIZE), np.diff(block_ptr))
        blocks = self.nnz // BLOCK_SIZE
        rows = groups[:, None] * BLOCK_SIZE + np.arange(BLOCK_SIZE)[None, :]
        index = np.full(self.capacity, -1, dtype=np.int64)
        positions = self.indices["positions"][:blocks].astype(np.int64)
        index[: self.nnz] = (rows * in_channels * KERNEL_TAPS + positions[:, None]).reshape(-1)
        return torch.from_numpy(index)


@dataclass(frozen=True, eq=False)
class PatternFormat(SparseFormat):
    """``K`` kernels per filter: ``channels [O*K]``, ``pattern_ids [O*K]``, values ``[O*K, 4]``.

    The first :attr:`kernels_used` slots of each filter hold its kernels; padding slots (capacity above
    the mask's kernel count) carry channel 0, pattern 0 and zero values, and no grad-input entry. The
    grad-input structure is per weight (like irregular), since a kernel's 4 taps feed different
    output parities of a stride-2 transposed conv.
    """

    scheme: ClassVar[str] = "pattern"
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


@dataclass(frozen=True, eq=False)
class ChannelFormat(SparseFormat):
    """Whole output filters: ``kept [F]`` and values ``[F, I, 3, 3]`` (run by PyTorch's dense conv)."""

    scheme: ClassVar[str] = "channel"
    layout: ClassVar[dict[str, tuple[str, ...]]] = {
        "forward": ("kept", "values"),
        "grad_input": ("kept", "values"),
        "grad_weight": ("kept",),
    }

    filters_used: int = 0

    def dense_index(self) -> torch.Tensor:
        in_channels = self.weight_shape[1]
        per_filter = in_channels * KERNEL_TAPS
        filters = self.capacity // per_filter
        kept = self.indices["kept"].astype(np.int64)
        index = kept[:, None] * per_filter + np.arange(per_filter)[None, :]
        index[np.arange(filters) >= self.filters_used] = -1
        return torch.from_numpy(index.reshape(-1))

    def compact_weight(self) -> torch.Tensor:
        """``[F, I, 3, 3]`` view of the values (padding filters included)."""
        return self.values.reshape(-1, *self.weight_shape[1:])


def parity_class(flipped_tap: np.ndarray) -> np.ndarray:
    """Output-pixel parity class (0-3) a flipped tap feeds in a stride-2 transposed conv.

    Output row ``h`` of ``dx`` receives tap row ``kh' = 2 - kh`` only when ``h`` is even for
    ``kh' == 1`` and odd otherwise; likewise for columns. Class ``2 * (kh' != 1) + (kw' != 1)``.
    """
    return 2 * (flipped_tap // 3 != 1) + (flipped_tap % 3 != 1)


def _transpose_entries(rows: np.ndarray, positions: np.ndarray, perm_base: np.ndarray, out_channels: int, in_channels: int) -> dict[str, np.ndarray]:
    """Transposed CSR with flipped taps, for the grad-input kernels.

    Rows are (input channel, parity class) pairs: ``t_row_ptr`` has ``4 * I + 1`` entries, so a
    stride-1 kernel walks ``t_row_ptr[4i] .. t_row_ptr[4i + 4]`` and a stride-2 kernel one class at a
    time (see :func:`parity_class`). ``rows`` is the output filter of each entry,
    ``positions = i*9 + tap``, ``perm_base`` the value slot of each entry.
    """
    channel, tap = positions // KERNEL_TAPS, positions % KERNEL_TAPS
    flipped = KERNEL_TAPS - 1 - tap
    t_positions = rows * KERNEL_TAPS + flipped
    row_class = channel * 4 + parity_class(flipped)
    order = np.lexsort((t_positions, row_class))
    return {
        "t_row_ptr": _row_ptr(row_class[order], 4 * in_channels, len(rows)),
        "t_positions": _as_index(t_positions[order], out_channels * KERNEL_TAPS - 1),
        "t_perm": _as_index(perm_base[order], max(len(perm_base) - 1, 0)),
    }


def _pad(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    return np.concatenate([array, np.full(size - len(array), fill, dtype=array.dtype)]) if size > len(array) else array


def _pack_irregular(weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> IrregularFormat:
    out_channels, in_channels = weight.shape[:2]
    flat_mask = mask.reshape(out_channels, -1)
    rows, positions = (t.numpy() for t in flat_mask.nonzero(as_tuple=True))
    nnz = len(rows)
    slots = max(_check_capacity(capacity, nnz), 1)
    values = torch.zeros(slots, dtype=torch.float32)
    values[:nnz] = weight.detach().reshape(out_channels, -1)[flat_mask]
    indices = {
        "row_ptr": _row_ptr(rows, out_channels, slots),
        "positions": _as_index(_pad(positions, slots), in_channels * KERNEL_TAPS - 1),
    }
    transposed = _transpose_entries(rows, positions, np.arange(nnz), out_channels, in_channels)
    indices["t_row_ptr"] = _as_index(transposed["t_row_ptr"], slots)  # dtype by capacity, not count
    indices["t_positions"] = _as_index(_pad(transposed["t_positions"], slots), out_channels * KERNEL_TAPS - 1)
    indices["t_perm"] = _as_index(_pad(transposed["t_perm"], slots), slots - 1)
    return IrregularFormat(tuple(weight.shape), values, nnz, indices)


def _pack_block(weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> BlockFormat:
    out_channels, in_channels = weight.shape[:2]
    if out_channels % BLOCK_SIZE:
        raise SparseFormatError(f"block scheme needs output channels divisible by {BLOCK_SIZE}, got {out_channels}")
    grouped = mask.reshape(out_channels // BLOCK_SIZE, BLOCK_SIZE, -1)
    kept = grouped.any(dim=1)
    if not torch.equal(kept, grouped.all(dim=1)):
        raise SparseFormatError("block mask keeps part of a 4x1 block; every block must be all kept or all pruned")
    groups, positions = (t.numpy() for t in kept.nonzero(as_tuple=True))
    blocks = len(groups)
    nnz = blocks * BLOCK_SIZE
    slots = _round_up(_check_capacity(capacity, nnz), BLOCK_SIZE)
    block_slots = slots // BLOCK_SIZE
    values = torch.zeros(slots, dtype=torch.float32)
    dense = weight.detach().reshape(out_channels // BLOCK_SIZE, BLOCK_SIZE, -1)
    values[:nnz] = dense[torch.from_numpy(groups), :, torch.from_numpy(positions)].reshape(-1)
    indices = {
        "block_ptr": _row_ptr(groups, out_channels // BLOCK_SIZE, block_slots),
        "positions": _as_index(_pad(positions, block_slots), in_channels * KERNEL_TAPS - 1),
    }
    rows = (groups[:, None] * BLOCK_SIZE + np.arange(BLOCK_SIZE)[None, :]).reshape(-1)
    element_positions = np.repeat(positions, BLOCK_SIZE)
    transposed = _transpose_entries(rows, element_positions, np.arange(nnz), out_channels, in_channels)
    indices["t_row_ptr"] = _as_index(transposed["t_row_ptr"], slots)  # dtype by capacity, not count
    indices["t_positions"] = _as_index(_pad(transposed["t_positions"], slots), out_channels * KERNEL_TAPS - 1)
    indices["t_perm"] = _as_index(_pad(transposed["t_perm"], slots), slots - 1)
    return BlockFormat(tuple(weight.shape), values, nnz, indices)


def _pack_pattern(weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> PatternFormat:
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
    slots = _round_up(_check_capacity(capacity, nnz), unit)
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
    transposed = _transpose_entries(element_rows, element_positions, element_slots, out_channels, in_channels)
    indices = {
        "channels": _as_index(all_channels, in_channels - 1),
        "pattern_ids": _as_index(all_ids, NUM_PATTERNS - 1),
        "taps": PATTERN_TAPS.copy(),
        "t_row_ptr": _as_index(transposed["t_row_ptr"], slots),  # dtype by capacity, not count
        "t_positions": _as_index(_pad(transposed["t_positions"], slots), out_channels * KERNEL_TAPS - 1),
        "t_perm": _as_index(_pad(transposed["t_perm"], slots), slots - 1),
    }
    return PatternFormat(tuple(weight.shape), values.reshape(-1), nnz, indices, kernels_used=used)


def _pack_channel(weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> ChannelFormat:
    out_channels, in_channels = weight.shape[:2]
    filter_mask = mask.reshape(out_channels, -1)
    kept_filters = filter_mask.any(dim=1)
    if not torch.equal(kept_filters, filter_mask.all(dim=1)):
        raise SparseFormatError("channel mask keeps part of an output filter; every filter must be all kept or all pruned")
    kept = kept_filters.nonzero(as_tuple=True)[0].numpy()
    per_filter = in_channels * KERNEL_TAPS
    nnz = len(kept) * per_filter
    slots = _round_up(_check_capacity(capacity, nnz), per_filter)
    filters = slots // per_filter
    if filters > out_channels:
        raise SparseFormatError(f"capacity {capacity} exceeds the dense weight's {out_channels * per_filter} weights")
    values = torch.zeros(filters, per_filter, dtype=torch.float32)
    values[: len(kept)] = weight.detach().reshape(out_channels, -1)[torch.from_numpy(kept)]
    indices = {"kept": _as_index(_pad(kept, filters), out_channels - 1)}
    return ChannelFormat(tuple(weight.shape), values.reshape(-1), nnz, indices, filters_used=len(kept))


_PACKERS = {
    "irregular": _pack_irregular,
    "block": _pack_block,
    "pattern": _pack_pattern,
    "channel": _pack_channel,
}


def pack(scheme: str, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None = None) -> SparseFormat:
    """Compact format of ``weight * mask`` for ``scheme``.

    Parameters
    ----------
    scheme : str
        ``"irregular"``, ``"block"``, ``"pattern"`` or ``"channel"``.
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
    _check_inputs(scheme, weight, mask)
    return _PACKERS[scheme](weight, mask, capacity)


def transfer(slots: torch.Tensor, source: SparseFormat, target: SparseFormat) -> torch.Tensor:
    """Move a per-slot tensor (values, momentum) from one format's slots to another's, by position.

    Weights kept by both formats carry their value over; positions only ``target`` keeps (regrown
    weights) and padding slots get 0. Used at a mask mutation, when a dense temporary is allowed.

    Parameters
    ----------
    slots : torch.Tensor
        1-D tensor of ``source.capacity`` entries.
    source, target : SparseFormat
        Formats of the same weight shape.

    Returns
    -------
    torch.Tensor
        1-D tensor of ``target.capacity`` entries, same dtype as ``slots``.
    """
    if source.weight_shape != target.weight_shape:
        raise SparseFormatError(f"cannot transfer between weight shapes {list(source.weight_shape)} and {list(target.weight_shape)}")
    if slots.shape != (source.capacity,):
        raise SparseFormatError(f"slots must have shape [{source.capacity}], got {list(slots.shape)}")
    dense = torch.zeros(int(np.prod(source.weight_shape)), dtype=slots.dtype)
    from_index = source.dense_index()
    kept = from_index >= 0
    dense[from_index[kept]] = slots.detach()[kept]
    to_index = target.dense_index()
    out = torch.zeros(target.capacity, dtype=slots.dtype)
    valid = to_index >= 0
    out[valid] = dense[to_index[valid]]
    return out
