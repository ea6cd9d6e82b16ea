"""``SparseConv2d``: a 3x3 convolution (padding 1, no bias) whose only parameter is the compact values.

Forward and backward run the TVM kernels of :mod:`schedules.kernels` through a
``torch.autograd.Function``; torch tensors are handed to the kernels zero-copy (DLPack), index
arrays are converted once per pack. The weight gradient exists only at the kept positions (the
grad-weight kernel writes ``capacity`` values), so no dense weight or dense gradient is ever formed.
The channel scheme runs PyTorch's own dense conv on the compacted ``[kept, I, 3, 3]`` weight and
scatters its output into the pruned filters' zeros (PyTorch's autograd gives its gradients).

The trainer constructs the layer from ``(weight, mask, scheme)`` and calls :meth:`SparseConv2d.repack`
at each mask mutation: the parameter object stays the same (its data is replaced), and the kernel
cache answers unless the capacity changed. :class:`CompactWeight`, its base, is the compact weight
alone (values, format, re-pack), without kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tvm
from torch import nn

from schedules.cache import KernelCache, default_cache
from schedules.errors import SparseFormatError
from schedules.formats import DIRECTIONS, ChannelFormat, SparseFormat, pack


def _index_tensors(fmt: SparseFormat, direction: str) -> list[Any]:
    """The format's buffers of ``direction`` as kernel arguments, ``None`` standing for the values."""
    return [None if name == "values" else tvm.runtime.tensor(np.ascontiguousarray(array)) for name, array in fmt.buffers(direction).items()]


def _with_values(arguments: list[Any], values: torch.Tensor) -> list[Any]:
    return [values if a is None else a for a in arguments]


class _SparseConvFunction(torch.autograd.Function):
    """``y = conv2d(x, W_sparse)`` with the sparse kernels in both directions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: "SparseConv2d") -> torch.Tensor:
        x = x.contiguous()
        kernels = layer.kernels(tuple(x.shape))
        y = x.new_empty(layer.output_shape(tuple(x.shape)))
        kernels["forward"](x, *_with_values(layer._arguments["forward"], values.detach()), y)
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, values = ctx.saved_tensors
        layer: SparseConv2d = ctx.layer
        dy = dy.contiguous()
        kernels = layer.kernels(tuple(x.shape))
        dx = dvalues = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            kernels["grad_input"](dy, *_with_values(layer._arguments["grad_input"], values.detach()), dx)
        if ctx.needs_input_grad[1]:
            dvalues = torch.empty_like(values)
            kernels["grad_weight"](x, dy, *_with_values(layer._arguments["grad_weight"], values.detach()), dvalues)
            if layer._padding is not None:
                dvalues.mul_(layer._padding)
        return dx, dvalues, None


class CompactWeight(nn.Module):
    """A 3x3 conv weight (padding 1, no bias) held compactly: its only parameter is the format's values.

    Holds no kernels: :class:`SparseConv2d` runs it eagerly; the compiled training step of ``mest``
    takes its values and index arrays as inputs.

    Parameters
    ----------
    weight : torch.Tensor
        Dense float32 ``[O, I, 3, 3]`` weight (only its values under ``mask`` are kept).
    mask : torch.Tensor
        Bool mask of the same shape, valid for ``scheme``.
    scheme : str
        ``"irregular"``, ``"block"``, ``"pattern"`` or ``"channel"``.
    stride : int
        1 or 2.
    capacity : int, optional
        Value slots to allocate (upper bound of non-zeros under Soft Memory Bound).

    Attributes
    ----------
    values : torch.nn.Parameter
        The compact values (``capacity`` float32), the only parameter.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, scheme: str, stride: int = 1,
                 capacity: int | None = None) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise SparseFormatError(f"stride {stride} is not supported; sparse convs take stride 1 or 2")
        self.scheme = scheme
        self.stride = stride
        fmt = pack(scheme, weight, mask, capacity)
        self.values = nn.Parameter(fmt.values)
        self._set_format(fmt)

    @property
    def format(self) -> SparseFormat:
        """The compact format with the parameter's current values."""
        return self._format.with_values(self.values.data)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """``(O, I, 3, 3)``."""
        return self._format.weight_shape

    def _set_format(self, fmt: SparseFormat) -> None:
        self._format = fmt

    def repack(self, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None = None) -> None:
        """Take a new mask (after a mutation): re-pack values and indices, keep the parameter object.

        Parameters
        ----------
        weight : torch.Tensor
            Dense float32 weight to take the kept values from.
        mask : torch.Tensor
            The new mask.
        capacity : int, optional
            New capacity; default keeps the current one (so built kernels stay valid).
        """
        fmt = pack(self.scheme, weight, mask, capacity if capacity is not None else self._format.capacity)
        self.values.data = fmt.values
        self._set_format(fmt)

    def to_dense(self) -> torch.Tensor:
        """Dense ``[O, I, 3, 3]`` weight (``weight * mask``) of the current values."""
        return self.format.to_dense()

    def mask(self) -> torch.Tensor:
        """Bool ``[O, I, 3, 3]`` mask of the kept positions."""
        return self._format.to_mask()

    def extra_repr(self) -> str:
        return f"{self.weight_shape[1]}, {self.weight_shape[0]}, scheme={self.scheme}, stride={self.stride}, capacity={self._format.capacity}"


class SparseConv2d(CompactWeight):
    """3x3 convolution, padding 1, no bias, stored compactly and run by sparse TVM kernels.

    Parameters
    ----------
    weight, mask, scheme, stride, capacity
        As :class:`CompactWeight`.
    cache : KernelCache, optional
        Where kernels come from; default the process-wide cache.
    batch_size : int, optional
        The batch the kernels are built for: a smaller batch (the last of an epoch) is zero-padded
        to it and the output cut back, which is exact (images are independent; padded images add
        zero to the weight gradient) and spares a kernel build per odd batch size. Larger batches,
        or every batch when not given, get kernels of their own size.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        scheme: str,
        stride: int = 1,
        capacity: int | None = None,
        cache: KernelCache | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.cache = cache if cache is not None else default_cache()
        self.batch_size = batch_size
        super().__init__(weight, mask, scheme, stride, capacity)

    def _set_format(self, fmt: SparseFormat) -> None:
        self._format = fmt
        self._kernels: dict[tuple[int, ...], dict[str, Any]] = {}
        valid = fmt.valid_slots()
        self._padding = None if bool(valid.all()) else valid.to(torch.float32)
        if isinstance(fmt, ChannelFormat):
            self._arguments = {}
            self._kept = torch.from_numpy(fmt.indices["kept"][: fmt.filters_used].astype(np.int64))
        else:
            self._arguments = {d: _index_tensors(fmt, d) for d in DIRECTIONS}

    def output_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """NCHW output shape for an input shape."""
        batch, _, height, width = x_shape
        return (batch, self.weight_shape[0], (height - 1) // self.stride + 1, (width - 1) // self.stride + 1)

    def kernels(self, x_shape: tuple[int, ...]) -> dict[str, Any]:
        """The three built kernels for ``x_shape`` (from the cache, remembered until the next re-pack)."""
        if x_shape not in self._kernels:
            self._kernels[x_shape] = {d: self.cache.get(self._format, d, x_shape, self.stride) for d in DIRECTIONS}
        return self._kernels[x_shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv2d(x, weight * mask, stride, padding=1)``."""
        if x.dim() != 4 or x.shape[1] != self.weight_shape[1] or x.dtype != torch.float32:
            raise SparseFormatError(f"input must be float32 [N, {self.weight_shape[1]}, H, W], got {x.dtype} {list(x.shape)}")
        if isinstance(self._format, ChannelFormat):
            return self._channel_forward(x)
        batch = x.shape[0]
        if self.batch_size is not None and batch < self.batch_size:
            padded = torch.cat([x, x.new_zeros(self.batch_size - batch, *x.shape[1:])])
            return _SparseConvFunction.apply(padded, self.values, self)[:batch]
        return _SparseConvFunction.apply(x, self.values, self)

    def _channel_forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = self._format
        weight = self.values.view(-1, *self.weight_shape[1:])[: fmt.filters_used]
        kept = torch.nn.functional.conv2d(x, weight, stride=self.stride, padding=1)
        y = x.new_zeros(self.output_shape(tuple(x.shape)))
        return y.index_copy(1, self._kept, kept)

