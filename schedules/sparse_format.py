"""The compact format of a masked ``[O, I, 3, 3]`` convolution weight: what every scheme's format shares.

A format holds float32 values (a torch tensor: the trainable parameter of
:class:`schedules.layer.SparseConv2d`) and index arrays (numpy, in the smallest integer type that fits:
``uint8``, ``uint16`` or ``int32``). The kernels take the arrays of :meth:`SparseFormat.buffers` for a
direction, in order, as runtime arguments, so a new mask is a re-pack and never a code change. Each
scheme's format (its layout, packer and kernel walk) is in its file under :mod:`schedules.schemes`;
:func:`schedules.formats.pack` picks it by name.

The grad-input kernels read the transposed structure (``t_*`` arrays: CSR over input channels with
flipped taps and a permutation into ``values``, its rows further split by the output parity a tap
feeds at stride 2), built at pack time from the same mask (:func:`transposed_indices`).

``capacity`` (number of value slots, rounded up to the scheme's unit) sizes the buffers for an upper
bound of non-zeros (Soft Memory Bound): padding slots hold zero values, belong to no output, and
:meth:`SparseFormat.valid_slots` tells them apart, so a kernel keyed by capacity serves every mask up
to that bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from schedules.errors import SparseFormatError, UnsupportedKernelError

if TYPE_CHECKING:
    from schedules.kernels.entries import Entries

DIRECTIONS = ("forward", "grad_input", "grad_weight")
KERNEL_TAPS = 9
#: Output parities of a stride-2 transposed conv (rows of the transposed structure per input channel).
PARITY_CLASSES = 4


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


def as_index(values: np.ndarray | torch.Tensor, max_value: int) -> np.ndarray:
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.ascontiguousarray(array.astype(index_dtype(max_value)))


def row_ptr(rows: np.ndarray, num_rows: int, max_value: int) -> np.ndarray:
    counts = np.bincount(rows.astype(np.int64), minlength=num_rows)
    return as_index(np.concatenate([[0], np.cumsum(counts)]), max_value)


def check_capacity(capacity: int | None, nnz: int) -> int:
    if capacity is None:
        return nnz
    if capacity < nnz:
        raise SparseFormatError(f"capacity {capacity} is below the mask's {nnz} non-zeros")
    return int(capacity)


def round_up(value: int, unit: int) -> int:
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

    def with_weight(self, weight: torch.Tensor) -> "SparseFormat":
        """The same indices with the values of a dense weight, for an unchanged mask (cheap: a gather).

        A new mask is a new :func:`~schedules.formats.pack` (what :meth:`schedules.layer.SparseConv2d.repack` does).
        """
        return self.with_values(self.gather(weight))

    def entries(self, direction: str) -> "Entries":
        """How the kernels of :mod:`schedules.kernels` walk this format in ``direction``.

        Raises
        ------
        UnsupportedKernelError
            For a scheme that runs PyTorch's dense conv instead of a TVM kernel (channel).
        """
        raise UnsupportedKernelError(f"scheme {self.scheme!r} has no TVM kernel; it runs PyTorch's dense conv on the compacted weight")


def parity_class(flipped_tap: np.ndarray) -> np.ndarray:
    """Output-pixel parity class (0-3) a flipped tap feeds in a stride-2 transposed conv.

    Output row ``h`` of ``dx`` receives tap row ``kh' = 2 - kh`` only when ``h`` is even for
    ``kh' == 1`` and odd otherwise; likewise for columns. Class ``2 * (kh' != 1) + (kw' != 1)``.
    """
    return 2 * (flipped_tap // 3 != 1) + (flipped_tap % 3 != 1)


def _transposed_entries(rows: np.ndarray, positions: np.ndarray, perm_base: np.ndarray, out_channels: int, in_channels: int) -> dict[str, np.ndarray]:
    """Transposed CSR with flipped taps, for the grad-input kernels.

    Rows are (input channel, parity class) pairs: ``t_row_ptr`` has ``4 * I + 1`` entries, so a
    stride-1 kernel walks ``t_row_ptr[4i] .. t_row_ptr[4i + 4]`` and a stride-2 kernel one class at a
    time (see :func:`parity_class`). ``rows`` is the output filter of each entry,
    ``positions = i*9 + tap``, ``perm_base`` the value slot of each entry.
    """
    channel, tap = positions // KERNEL_TAPS, positions % KERNEL_TAPS
    flipped = KERNEL_TAPS - 1 - tap
    t_positions = rows * KERNEL_TAPS + flipped
    row_class = channel * PARITY_CLASSES + parity_class(flipped)
    order = np.lexsort((t_positions, row_class))
    return {
        "t_row_ptr": row_ptr(row_class[order], PARITY_CLASSES * in_channels, len(rows)),
        "t_positions": as_index(t_positions[order], out_channels * KERNEL_TAPS - 1),
        "t_perm": as_index(perm_base[order], max(len(perm_base) - 1, 0)),
    }


def pad(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """``array`` padded with ``fill`` to ``size`` entries."""
    return np.concatenate([array, np.full(size - len(array), fill, dtype=array.dtype)]) if size > len(array) else array


def transposed_indices(rows: np.ndarray, positions: np.ndarray, slot_of_entry: np.ndarray, slots: int,
                       out_channels: int, in_channels: int) -> dict[str, np.ndarray]:
    """The ``t_*`` arrays of a format with ``slots`` value slots (see :func:`_transposed_entries`),
    padded to ``slots`` entries, their dtypes chosen by the capacity (not the count), so a kernel
    cached by capacity takes every mask up to it."""
    transposed = _transposed_entries(rows, positions, slot_of_entry, out_channels, in_channels)
    return {
        "t_row_ptr": as_index(transposed["t_row_ptr"], slots),
        "t_positions": as_index(pad(transposed["t_positions"], slots), out_channels * KERNEL_TAPS - 1),
        "t_perm": as_index(pad(transposed["t_perm"], slots), slots - 1),
    }


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
