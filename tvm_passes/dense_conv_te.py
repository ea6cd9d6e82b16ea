"""Tensor expressions of the three dense convolutions of a training step, in layouts that tile well.

Used by :class:`~tvm_passes.legalize_dense_conv.LegalizeDenseConv` (the computations) and
:class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv` (the block names it recognises). All three
read their image operand through a **phase-split padded copy** ``P[n, c, i, j, a, b] = xpad[n, c,
s*a + i, s*b + j]`` (``i, j`` below ``min(kernel, s)``): a stride-``s`` tap ``xpad[s*y + ry]`` is
``P[ry % s, y + ry // s]``, so every inner load is contiguous along the output width, whatever the
stride, and a 1x1 stride-2 conv copies only the quarter of the image it reads.

- :func:`conv2d_forward`: ``y = conv2d(x, W)`` (NCHW, OIHW);
- :func:`conv2d_grad_input`: ``conv2d_transpose(dy, W)`` (NCHW, IOHW) by output phase: the output
  pixels ``h`` with ``(h + pad) % s == r`` form a dense sub-grid that only the taps ``r + s*t`` reach,
  so each residue class is a stride-1 conv over the padded ``dy`` with its own taps (no product with
  an inserted zero, unlike a conv over the dilated ``dy``; a phase that no tap reaches is not computed
  at all), and a last injective stage interleaves the classes into ``dx``;
- :func:`conv2d_grad_weight`: the ``CNHW``/``IOHW`` conv that Relax's ``Gradient`` emits for a
  weight, ``dW[f, c, i, j] = sum_{n, oy, ox} dy[n, f, oy, ox] * xpad[n, c, d*oy + i, d*ox + j]``
  (``d`` the forward stride).
"""

from __future__ import annotations

from tvm import te, tirx

#: Block names, shared with the schedule pass.
PHASE_PAD = "dense_phase_pad"
IMAGE_VIEW = "dense_image_view"  # a phase-split "copy" that is the image itself: inlined, not computed
FORWARD = "dense_conv_forward"
GRAD_INPUT = "dense_conv_grad_input"
GRAD_INPUT_TAPS = "dense_grad_input_taps"
GRAD_INPUT_INTERLEAVE = "dense_grad_input_interleave"
GRAD_WEIGHT = "dense_conv_grad_weight"
#: Block annotation of the interleave: the stride ``[s_h, s_w]`` whose residue classes it gathers.
STRIDE_ATTR = "mest.stride"


def _zero(dtype: str) -> tirx.PrimExpr:
    return tirx.const(0.0, dtype)


def phase_pad(x: te.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad_before: tuple[int, int],
              out_size: tuple[int, int]) -> te.Tensor:
    """``P[n, c, i, j, a, b] = x[n, c, s_h*a + i - pad_t, s_w*b + j - pad_l]`` (zero outside ``x``).

    ``i`` runs over ``min(kernel_h, s_h)`` phases and ``a`` over ``out_h + (kernel_h - 1) // s_h`` rows:
    exactly what a ``kernel``-tap, stride-``s`` conv producing ``out_size`` reads. When that is ``x``
    itself (stride 1, no padding, no row or column left out), the stage is named :data:`IMAGE_VIEW`;
    when no index can fall outside ``x`` (a 1x1 stride-2 conv), the copy has no bounds test.
    """
    _, _, height, width = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (pt, pl), (oh, ow) = kernel, stride, pad_before, out_size
    shape = (int(x.shape[0]), int(x.shape[1]), min(kh, sh), min(kw, sw), oh + (kh - 1) // sh, ow + (kw - 1) // sw)
    if (sh, sw, pt, pl) == (1, 1, 0, 0) and shape[4:] == (height, width):
        return te.compute(shape, lambda n, c, i, j, a, b: x[n, c, a, b], name=IMAGE_VIEW)

    last_h, last_w = sh * (shape[4] - 1) + shape[2] - 1 - pt, sw * (shape[5] - 1) + shape[3] - 1 - pl
    always_inside = pt == 0 and pl == 0 and last_h < height and last_w < width

    def value(n, c, i, j, a, b):
        h, w = sh * a + i - pt, sw * b + j - pl
        if always_inside:
            return x[n, c, h, w]
        inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
        return te.if_then_else(inside, x[n, c, h, w], _zero(x.dtype))

    return te.compute(shape, value, name=PHASE_PAD)


def conv2d_forward(x: te.Tensor, w: te.Tensor, stride: tuple[int, int],
                   padding: tuple[int, int, int, int]) -> te.Tensor:
    """``conv2d(x, w)``: NCHW input, OIHW weight, ``padding`` = (top, left, bottom, right)."""
    _, channels, height, width = (int(d) for d in x.shape)
    filters, _, kh, kw = (int(d) for d in w.shape)
    (sh, sw), (pt, pl, pb, pr) = stride, padding
    oh, ow = (height + pt + pb - kh) // sh + 1, (width + pl + pr - kw) // sw + 1
    p = phase_pad(x, (kh, kw), (sh, sw), (pt, pl), (oh, ow))
    rc, ry, rx = te.reduce_axis((0, channels), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (int(x.shape[0]), filters, oh, ow),
        lambda n, f, y, xx: te.sum(p[n, rc, ry % sh, rx % sw, y + ry // sh, xx + rx // sw] * w[f, rc, ry, rx],
                                   axis=[rc, ry, rx]),
        name=FORWARD,
    )


def conv2d_grad_weight(x: te.Tensor, dy: te.Tensor, dilation: tuple[int, int], padding: tuple[int, int, int, int],
                       kernel: tuple[int, int]) -> te.Tensor:
    """The weight gradient ``(F, C, kernel_h, kernel_w)`` of a stride-``dilation`` forward conv.

    ``x`` is the forward input (N, C, H, W), ``dy`` the output gradient (N, F, OH, OW); this is
    Relax's ``conv2d(x, dy, strides=1, dilation=d, data_layout="CNHW", kernel_layout="IOHW",
    out_layout="CNHW")``, whose spatial output size ``kernel`` may exceed the forward kernel (the
    caller slices).
    """
    batch, channels = int(x.shape[0]), int(x.shape[1])
    _, filters, oh, ow = (int(d) for d in dy.shape)
    (dh, dw), (kh, kw) = dilation, kernel
    p = phase_pad(x, (kh, kw), (dh, dw), padding[:2], (oh, ow))
    rn, ry, rx = te.reduce_axis((0, batch), "rn"), te.reduce_axis((0, oh), "ry"), te.reduce_axis((0, ow), "rx")
    return te.compute(
        (filters, channels, kh, kw),
        lambda f, c, i, j: te.sum(dy[rn, f, ry, rx] * p[rn, c, i % dh, j % dw, ry + i // dh, rx + j // dw],
                                  axis=[rn, ry, rx]),
        name=GRAD_WEIGHT,
    )


def conv2d_grad_input(dy: te.Tensor, w: te.Tensor, stride: tuple[int, int], padding: tuple[int, int, int, int],
                      out_size: tuple[int, int]) -> te.Tensor:
    """``conv2d_transpose(dy, w)`` of size ``out_size``: NCHW ``dy`` (N, F, OH, OW), IOHW ``w`` (F, C, KH, KW).

    Residue class ``r`` of the rows (``(h + pad_t) % s == r``, ``h = s*a + ph``) takes the taps
    ``r + s*t`` and the rows ``a + (ph + pad_t) // s - t`` of ``dy``; ``T = ceil(K / s)`` taps per
    class, zero weights where ``r + s*t >= K``.
    """
    batch, _, oh, ow = (int(d) for d in dy.shape)
    _, channels, kh, kw = (int(d) for d in w.shape)
    (sh, sw), (pt, pl) = stride, padding[:2]
    height, width = out_size
    th, tw = -(-kh // sh), -(-kw // sw)  # taps per residue class
    rh, rw = min(kh, sh), min(kw, sw)  # residue classes that some tap reaches
    ah, aw = -(-height // sh), -(-width // sw)  # rows and columns of a class

    def offset(r, pad, s):  # (ph + pad) // s for the phase ph = (r - pad) mod s of residue r
        return ((r - pad % s + s) % s + pad) // s

    qh, qw = max(offset(r, pt, sh) for r in range(rh)), max(offset(r, pl, sw) for r in range(rw))
    padded_shape = (batch, int(dy.shape[1]), ah + qh + th - 1, aw + qw + tw - 1)

    def padded(n, f, y, x):
        yy, xx = y - (th - 1), x - (tw - 1)
        inside = tirx.all(yy >= 0, yy < oh, xx >= 0, xx < ow)
        return te.if_then_else(inside, dy[n, f, yy, xx], _zero(dy.dtype))

    if (th, tw) == (1, 1) and padded_shape == tuple(int(v) for v in dy.shape):
        d = te.compute(padded_shape, lambda n, f, y, x: dy[n, f, y, x], name=IMAGE_VIEW)
    else:
        d = te.compute(padded_shape, padded, name=PHASE_PAD)

    def tap(f, c, r_h, r_w, t, u):
        i, j = r_h + sh * t, r_w + sw * u
        inside = tirx.all(i < kh, j < kw)
        return te.if_then_else(inside, w[f, c, tirx.min(i, kh - 1), tirx.min(j, kw - 1)], _zero(w.dtype))

    taps = te.compute((int(w.shape[0]), channels, rh, rw, th, tw), tap, name=GRAD_INPUT_TAPS)
    rf = te.reduce_axis((0, int(w.shape[0])), "rf")
    rt, ru = te.reduce_axis((0, th), "rt"), te.reduce_axis((0, tw), "ru")

    def class_sum(n, c, r_h, r_w, a, b):
        row, col = a + offset(r_h, pt, sh) - rt + th - 1, b + offset(r_w, pl, sw) - ru + tw - 1
        return te.sum(d[n, rf, row, col] * taps[rf, c, r_h, r_w, rt, ru], axis=[rf, rt, ru])

    if (sh, sw) == (1, 1):  # one class: the sum is the output
        return te.compute((batch, channels, height, width), lambda n, c, h, x: class_sum(n, c, 0, 0, h, x),
                          name=GRAD_INPUT)
    classes = te.compute((batch, channels, rh, rw, ah, aw), class_sum, name=GRAD_INPUT)

    def interleave(n, c, h, x):
        r_h, r_w = (h + pt) % sh, (x + pl) % sw
        reached = tirx.all(r_h < rh, r_w < rw)
        value = classes[n, c, tirx.min(r_h, rh - 1), tirx.min(r_w, rw - 1), h // sh, x // sw]
        return te.if_then_else(reached, value, _zero(dy.dtype))

    return te.compute((batch, channels, height, width), interleave, name=GRAD_INPUT_INTERLEAVE,
                      attrs={STRIDE_ATTR: [sh, sw]})
