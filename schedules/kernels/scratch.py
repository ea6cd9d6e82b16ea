"""Per-image padded scratch copies that turn every 3x3 tap into a contiguous row read.

Three layouts, all flat ``float32`` buffers of ``channels * plane`` elements:

- ``pad`` (stride 1): the image with a zero border, ``[C, H+2, W+2]``.
- ``split`` (stride 2): the padded image with even and odd columns de-interleaved,
  ``[C, H+2, 2, ceil((W+2)/2)]``, so output column ``wo`` at tap ``kw`` reads ``wo + kw // 2`` of
  parity ``kw % 2``: contiguous across ``wo``.
- ``tail`` (grad-input of a stride-2 conv, entries split by output parity): ``dy`` with one zero
  row and column at the end, ``[O, Ho+1, Wo+1]``; flipped tap ``(kh', kw')`` of output pixel
  ``(2a + ph, 2b + pw)`` reads ``(a + kh' // 2, b + kw' // 2)``, so no product is wasted.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.script.ir_builder.tirx import ir as T

Expr = tvm.ir.expr.Expr


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class Scratch:
    """Geometry of one scratch layout.

    Attributes
    ----------
    mode : str
        ``"pad"``, ``"split"`` or ``"tail"``.
    channels, src_height, src_width : int
        Shape of one image of the source tensor.
    out_height, out_width : int
        Output size of the kernel that reads the scratch.
    """

    mode: str
    channels: int
    src_height: int
    src_width: int
    out_height: int
    out_width: int

    @property
    def padded_height(self) -> int:
        """Rows of one scratch channel."""
        if self.mode == "tail":
            return self.src_height + 1
        return self.src_height + 2

    @property
    def half_width(self) -> int:
        """Columns of one parity in the ``split`` layout."""
        return (self.src_width + 3) // 2

    @property
    def padded_width(self) -> int:
        """Floats per scratch row (both parities for ``split``)."""
        if self.mode == "split":
            return 2 * self.half_width
        if self.mode == "tail":
            return self.src_width + 1
        return self.src_width + 2

    @property
    def plane(self) -> int:
        """Floats per channel."""
        return self.padded_height * self.padded_width

    @property
    def size(self) -> int:
        """Floats of the whole scratch."""
        return self.channels * self.plane

    @property
    def row_stride(self) -> int:
        """Scratch floats between two consecutive output rows."""
        return 2 * self.padded_width if self.mode == "split" else self.padded_width

    def tap_offset(self, tap: Expr) -> Expr:
        """Offset of 3x3 position ``tap = kh * 3 + kw`` from the output pixel's top-left corner."""
        kh, kw = tap // 3, tap % 3
        if self.mode == "split":
            return kh * self.padded_width + (kw % 2) * self.half_width + kw // 2
        if self.mode == "tail":
            return (kh // 2) * self.padded_width + kw // 2
        return kh * self.padded_width + kw

    def fill(self, src: tirx.Buffer, n: Expr, dst: tirx.Buffer, dst_base: Expr) -> None:
        """Emit the loops that copy image ``n`` of ``src`` into ``dst[dst_base:]`` (IRBuilder context)."""
        zero = tirx.const(0.0, "float32")
        last_h, last_w = self.src_height - 1, self.src_width - 1
        with T.serial(0, self.channels) as c:
            with T.serial(0, self.padded_height) as hp:
                if self.mode == "split":
                    with T.serial(0, 2) as parity:
                        with T.vectorized(0, self.half_width) as j:
                            col = 2 * j + parity
                            inside = tirx.all(hp >= 1, hp <= self.src_height, col >= 1, col <= self.src_width)
                            load = src[n, c, T.min(T.max(hp - 1, 0), last_h), T.min(T.max(col - 1, 0), last_w)]
                            index = dst_base + c * self.plane + hp * self.padded_width + parity * self.half_width + j
                            T.buffer_store(dst, T.if_then_else(inside, load, zero), [index])
                elif self.mode == "tail":
                    with T.vectorized(0, self.padded_width) as wp:
                        inside = tirx.all(hp <= last_h, wp <= last_w)
                        load = src[n, c, T.min(hp, last_h), T.min(wp, last_w)]
                        index = dst_base + c * self.plane + hp * self.padded_width + wp
                        T.buffer_store(dst, T.if_then_else(inside, load, zero), [index])
                else:
                    with T.vectorized(0, self.padded_width) as wp:
                        inside = tirx.all(hp >= 1, hp <= self.src_height, wp >= 1, wp <= self.src_width)
                        load = src[n, c, T.min(T.max(hp - 1, 0), last_h), T.min(T.max(wp - 1, 0), last_w)]
                        index = dst_base + c * self.plane + hp * self.padded_width + wp
                        T.buffer_store(dst, T.if_then_else(inside, load, zero), [index])


def scratch_for(direction: str, stride: int, channels: int, height: int, width: int) -> Scratch:
    """Scratch layout of a kernel reading ``channels x height x width`` source images.

    Parameters
    ----------
    direction : str
        ``"forward"``, ``"grad_weight"`` (both read ``x``) or ``"grad_input"`` (reads ``dy``).
    stride : int
        1 or 2.
    channels, height, width : int
        For ``grad_input``, ``height`` and ``width`` are those of ``x`` (the output of the kernel).
    """
    out_height, out_width = conv_out_size(height, stride), conv_out_size(width, stride)
    if direction == "grad_input":
        if stride == 1:
            return Scratch("pad", channels, height, width, height, width)
        return Scratch("tail", channels, out_height, out_width, height, width)
    return Scratch("pad" if stride == 1 else "split", channels, height, width, out_height, out_width)
