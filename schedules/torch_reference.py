"""PyTorch's own conv backward, called the way autograd calls it: the reference our kernels are timed
and checked against (by the tuner's PyTorch baseline and by ``benchmarks.kernels``)."""

from __future__ import annotations

import torch


def torch_conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, output_mask: tuple[bool, bool, bool]) -> tuple:
    """``aten.convolution_backward`` of a 3x3, padding-1 conv: what autograd runs for its backward.

    ``torch.nn.grad.conv2d_input`` / ``conv2d_weight`` pass an expanded (stride-0) stand-in for
    ``x`` and miss oneDNN's fast path on some shapes, which would flatter a comparison; this calls the operator with the real tensors.

    Parameters
    ----------
    dy, x, weight : torch.Tensor
        Output gradient, input and weight.
    stride : int
        1 or 2.
    output_mask : tuple of bool
        Which of (grad_input, grad_weight, grad_bias) to compute.

    Returns
    -------
    tuple
        ``(grad_input, grad_weight, grad_bias)``, None where not computed.
    """
    return torch.ops.aten.convolution_backward(dy, x, weight, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1, output_mask)
