"""Interleaved wall-clock timing of several callables in one process (the machine is shared).

Each round times every callable once (``number`` calls, mean per call), in turn, so a burst of load
from other processes hits all of them alike; the medians over rounds are compared. Also the PyTorch
reference of a conv's backward directions, called the way autograd calls it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Measurement:
    """Per-call seconds of one callable over the rounds.

    Attributes
    ----------
    runs : tuple of float
        Mean seconds per call of each round.
    """

    runs: tuple[float, ...]

    @property
    def median_s(self) -> float:
        """Median over rounds."""
        return statistics.median(self.runs)


def interleaved(functions: dict[str, Callable[[], object]], rounds: int = 7, number: int = 3, warmup: int = 1) -> dict[str, Measurement]:
    """Time callables round-robin.

    Parameters
    ----------
    functions : dict of str to callable
        What to time, by name; each is called without arguments.
    rounds : int
        Rounds (samples per callable).
    number : int
        Calls per round and callable.
    warmup : int
        Untimed calls of each callable first.

    Returns
    -------
    dict of str to Measurement
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    runs: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(number):
                function()
            runs[name].append((time.perf_counter() - start) / number)
    return {name: Measurement(tuple(values)) for name, values in runs.items()}


def torch_conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, output_mask: tuple[bool, bool, bool]) -> tuple:
    """``aten.convolution_backward`` of a 3x3, padding-1 conv: what autograd runs for its backward.

    ``torch.nn.grad.conv2d_input`` / ``conv2d_weight`` pass an expanded (stride-0) stand-in for
    ``x`` and miss oneDNN's fast path on some shapes (about 2x slower here), which would flatter a
    comparison; this calls the operator with the real tensors.

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
