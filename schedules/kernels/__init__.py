"""Scheduled TIR kernels of the sparse 3x3 convolutions (padding 1, NCHW float32), per direction.

- :func:`forward_primfunc` ``(x, *fmt.buffers("forward"), y)``
- :func:`grad_input_primfunc` ``(dy, *fmt.buffers("grad_input"), dx)``
- :func:`grad_weight_primfunc` ``(x, dy, *fmt.buffers("grad_weight"), dvalues)``

All carry ``tir.is_scheduled`` so Relax's default schedules leave them alone, and take the format's
index arrays as runtime buffers. The channel scheme has no TVM kernel: it runs PyTorch's dense conv
on the compacted weight (:mod:`schedules.layer`), and these functions raise
:class:`schedules.errors.UnsupportedKernelError` for it.
"""

from __future__ import annotations

from tvm import tirx

from schedules.errors import UnsupportedKernelError
from schedules.sparse_format import SparseFormat
from schedules.kernels.gather_conv import gather_conv
from schedules.kernels.knobs import Knobs
from schedules.kernels.sampled_grad import sampled_grad
from schedules.kernels.scratch import conv_out_size, scratch_for

__all__ = ["Knobs", "forward_primfunc", "grad_input_primfunc", "grad_weight_primfunc", "output_shape"]


def output_shape(fmt: SparseFormat, x_shape: tuple[int, int, int, int], stride: int) -> tuple[int, int, int, int]:
    """NCHW shape of ``conv2d(x, W, stride, padding=1)`` for a format's weight.

    Raises
    ------
    UnsupportedKernelError
        A stride other than 1 or 2, an ``x`` that is not 4-D, or input channels that do not match.
    """
    if stride not in (1, 2):
        raise UnsupportedKernelError(f"stride {stride} is not supported; sparse kernels take stride 1 or 2")
    if len(x_shape) != 4:
        raise UnsupportedKernelError(f"x must be NCHW, got shape {list(x_shape)}")
    if x_shape[1] != fmt.weight_shape[1]:
        raise UnsupportedKernelError(f"x has {x_shape[1]} channels, the weight takes {fmt.weight_shape[1]}")
    batch, _, height, width = x_shape
    return (batch, fmt.weight_shape[0], conv_out_size(height, stride), conv_out_size(width, stride))


def forward_primfunc(fmt: SparseFormat, x_shape: tuple[int, int, int, int], stride: int, knobs: Knobs | None = None) -> tirx.PrimFunc:
    """Forward kernel ``y = conv2d(x, W_sparse, stride, padding=1)``.

    Parameters
    ----------
    fmt : SparseFormat
        Packed weight (irregular, block or pattern); only its shapes and dtypes shape the code.
    x_shape : tuple of int
        NCHW shape of the input.
    stride : int
        1 or 2.
    knobs : Knobs, optional
        Schedule knobs (tuned or default).

    Returns
    -------
    tvm.tirx.PrimFunc
        ``(x, *fmt.buffers("forward"), y)``, scheduled.
    """
    y_shape = output_shape(fmt, x_shape, stride)
    walk = fmt.entries("forward")
    scratch = scratch_for("forward", stride, x_shape[1], x_shape[2], x_shape[3])
    return gather_conv(walk, tuple(x_shape), y_shape, scratch, knobs, f"{fmt.scheme}_forward")


def grad_input_primfunc(fmt: SparseFormat, x_shape: tuple[int, int, int, int], stride: int, knobs: Knobs | None = None) -> tirx.PrimFunc:
    """Grad-input kernel ``dx = conv_transpose2d(dy, W_sparse, stride, padding=1)`` (no dense ``W``).

    Parameters
    ----------
    fmt : SparseFormat
        Packed weight (irregular, block or pattern).
    x_shape : tuple of int
        NCHW shape of the forward input (and of ``dx``).
    stride : int
        1 or 2.
    knobs : Knobs, optional
        Schedule knobs.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``(dy, *fmt.buffers("grad_input"), dx)``, scheduled.
    """
    y_shape = output_shape(fmt, x_shape, stride)
    walk = fmt.entries("grad_input")
    scratch = scratch_for("grad_input", stride, y_shape[1], x_shape[2], x_shape[3])
    return gather_conv(walk, y_shape, tuple(x_shape), scratch, knobs, f"{fmt.scheme}_grad_input", parity=stride == 2)


def grad_weight_primfunc(fmt: SparseFormat, x_shape: tuple[int, int, int, int], stride: int, knobs: Knobs | None = None) -> tirx.PrimFunc:
    """Grad-weight kernel: ``dL/dW`` only at the format's value slots (a sampled correlation).

    Parameters
    ----------
    fmt : SparseFormat
        Packed weight (irregular, block or pattern).
    x_shape : tuple of int
        NCHW shape of the forward input.
    stride : int
        1 or 2.
    knobs : Knobs, optional
        Schedule knobs.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``(x, dy, *fmt.buffers("grad_weight"), dvalues)`` with ``dvalues`` of ``fmt.capacity``
        slots (0 at padding slots that belong to no row), scheduled.
    """
    y_shape = output_shape(fmt, x_shape, stride)
    walk = fmt.entries("grad_weight")
    scratch = scratch_for("grad_weight", stride, x_shape[1], x_shape[2], x_shape[3])
    return sampled_grad(walk, tuple(x_shape), y_shape, fmt.capacity, scratch, knobs, f"{fmt.scheme}_grad_weight")


def primfunc(direction: str, fmt: SparseFormat, x_shape: tuple[int, int, int, int], stride: int, knobs: Knobs | None = None) -> tirx.PrimFunc:
    """The kernel of ``direction`` (``"forward"``, ``"grad_input"`` or ``"grad_weight"``)."""
    makers = {"forward": forward_primfunc, "grad_input": grad_input_primfunc, "grad_weight": grad_weight_primfunc}
    if direction not in makers:
        raise UnsupportedKernelError(f"unknown direction {direction!r}; expected one of {', '.join(makers)}")
    return makers[direction](fmt, x_shape, stride, knobs)
