"""Grad-weight kernels (only at the mask's positions) against ``torch`` autograd on the masked weight.

Tolerance: max abs error <= 1e-4 * (1 + max |reference|); capacity padding slots must be exactly 0
for CSR/block (they belong to no row).
"""

from __future__ import annotations

import pytest
import torch

from schedules.formats import pack

CASES = [
    (12, 7, 1, 8, 8, 0.5),
    (8, 3, 2, 16, 16, 0.1),
    (20, 13, 1, 32, 32, 0.05),
    (16, 33, 3, 9, 7, 0.2),
    (4, 5, 1, 8, 8, 0.01),
]


@pytest.mark.parametrize("scheme", ["irregular", "block", "pattern"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stride", [1, 2])
def test_grad_weight_matches_torch_at_kept_positions(scheme, case, stride, make_mask, kernel_cache):
    out_channels, in_channels, batch, height, width, density = case
    generator = torch.Generator().manual_seed(sum(case[:5]) * 11 + stride)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator)
    mask = make_mask(scheme, weight.shape, density, generator)
    x = torch.randn(batch, in_channels, height, width, generator=generator)
    masked = (weight * mask).requires_grad_()
    reference = torch.nn.functional.conv2d(x, masked, stride=stride, padding=1)
    dy = torch.randn(reference.shape, generator=generator)
    reference.backward(dy)

    fmt = pack(scheme, weight, mask, capacity=int(mask.sum()) + 8)
    dvalues = torch.full((fmt.capacity,), float("nan"))
    kernel = kernel_cache.get(fmt, "grad_weight", tuple(x.shape), stride)
    kernel(x, dy, *fmt.buffers("grad_weight").values(), dvalues)
    expected = fmt.gather(masked.grad)
    valid = fmt.valid_slots()
    tolerance = 1e-4 * (1.0 + float(expected.abs().max()))
    assert float((dvalues[valid] - expected[valid]).abs().max()) <= tolerance
    if scheme != "pattern":
        assert torch.all(dvalues[~valid] == 0)
