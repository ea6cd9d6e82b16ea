"""Forward and grad-input kernels against ``torch.nn.functional.conv2d`` and its autograd.

Seeded sweep over odd channel counts, batch 1-3, spatial 8/16/32 (and odd sizes), densities 1%-50%,
strides 1 and 2, for the irregular, block and pattern schemes. Tolerance: max abs error <= 1e-4 *
(1 + max |reference|) (float32 sums in a different order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schedules.formats import pack
from schedules.schemes import SCHEME_SPECS

CASES = [
    # (out, in, batch, height, width, density)
    (12, 7, 1, 8, 8, 0.5),
    (8, 3, 2, 16, 16, 0.1),
    (20, 13, 1, 32, 32, 0.05),
    (16, 33, 3, 9, 7, 0.2),
    (4, 5, 1, 8, 8, 0.01),
]
SCHEMES = [name for name, spec in SCHEME_SPECS.items() if not spec.dense_kernel]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tolerance = 1e-4 * (1.0 + float(expected.abs().max()))
    assert float((actual - expected).abs().max()) <= tolerance


def _problem(scheme, case, stride, make_mask):
    out_channels, in_channels, batch, height, width, density = case
    generator = torch.Generator().manual_seed(sum(case[:5]) * 7 + stride + SCHEMES.index(scheme))
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator)
    mask = make_mask(scheme, weight.shape, density, generator)
    x = torch.randn(batch, in_channels, height, width, generator=generator, requires_grad=True)
    return weight, mask, x, generator


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stride", [1, 2])
def test_forward_and_grad_input_match_torch(scheme, case, stride, make_mask, kernel_cache):
    weight, mask, x, generator = _problem(scheme, case, stride, make_mask)
    fmt = pack(scheme, weight, mask)
    reference = torch.nn.functional.conv2d(x, weight * mask, stride=stride, padding=1)
    dy = torch.randn(reference.shape, generator=generator)
    reference.backward(dy)

    y = torch.empty_like(reference)
    forward = kernel_cache.get(fmt, "forward", tuple(x.shape), stride)
    forward(x.detach(), *fmt.buffers("forward").values(), y)
    _close(y, reference.detach())

    dx = torch.empty_like(x)
    grad_input = kernel_cache.get(fmt, "grad_input", tuple(x.shape), stride)
    grad_input(dy, *fmt.buffers("grad_input").values(), dx)
    _close(dx, x.grad)


def test_pattern_kernel_reads_the_table_not_constants(make_mask, kernel_cache):
    """One build serves every mask of the same shapes: a re-pack with new indices gives new results."""
    case = (8, 6, 1, 8, 8, 0.3)
    first, mask, x, generator = _problem("pattern", case, 1, make_mask)
    second_mask = make_mask("pattern", first.shape, 0.3, generator)
    second_mask = second_mask if torch.equal(second_mask.sum(dim=(1, 2, 3)), mask.sum(dim=(1, 2, 3))) else mask.flip(1)
    builds = kernel_cache.builds
    for m in (mask, second_mask):
        fmt = pack("pattern", first, m)
        y = torch.empty(1, 8, 8, 8)
        kernel_cache.get(fmt, "forward", tuple(x.shape), 1)(x.detach(), *fmt.buffers("forward").values(), y)
        _close(y, torch.nn.functional.conv2d(x.detach(), first * m, padding=1))
    assert kernel_cache.builds - builds <= 1


@pytest.mark.parametrize("scheme", SCHEMES)
def test_capacity_padding_changes_nothing(scheme, make_mask, kernel_cache):
    weight, mask, x, generator = _problem(scheme, (8, 5, 2, 8, 8, 0.2), 1, make_mask)
    fmt = pack(scheme, weight, mask, capacity=int(mask.sum()) * 2 + 8)
    y = torch.empty(2, 8, 8, 8)
    kernel_cache.get(fmt, "forward", tuple(x.shape), 1)(x.detach(), *fmt.buffers("forward").values(), y)
    _close(y, torch.nn.functional.conv2d(x.detach(), weight * mask, padding=1))
    assert np.all(fmt.values.numpy()[~fmt.valid_slots().numpy()] == 0)
