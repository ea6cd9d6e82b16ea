"""``SparseConv2d``: outputs and gradients against the masked dense conv, re-packing, bad input.

Tolerance: max abs error <= 1e-4 * (1 + max |reference|).
"""

from __future__ import annotations

import pytest
import torch

from schedules.errors import SparseFormatError
from schedules.layer import SparseConv2d
from schedules.schemes import SCHEMES


def _close(actual, expected):
    assert float((actual - expected).abs().max()) <= 1e-4 * (1.0 + float(expected.abs().max()))


def _reference(weight, mask, x, stride, dy):
    masked = (weight * mask).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = torch.nn.functional.conv2d(xr, masked, stride=stride, padding=1)
    y.backward(dy)
    return y.detach(), xr.grad, masked.grad


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_layer_matches_masked_dense_conv(scheme, stride, make_mask, kernel_cache):
    generator = torch.Generator().manual_seed(5 + stride)
    weight = torch.randn(12, 9, 3, 3, generator=generator)
    mask = make_mask(scheme, weight.shape, 0.2, generator)
    layer = SparseConv2d(weight, mask, scheme, stride=stride, capacity=int(mask.sum()) + 40, cache=kernel_cache)
    assert [name for name, _ in layer.named_parameters()] == ["values"]
    x = torch.randn(2, 9, 16, 16, generator=generator, requires_grad=True)
    y = layer(x)
    dy = torch.randn(y.shape, generator=generator)
    y.backward(dy)
    y_ref, dx_ref, dw_ref = _reference(weight, mask, x, stride, dy)
    _close(y.detach(), y_ref)
    _close(x.grad, dx_ref)
    fmt = layer.format
    _close(layer.values.grad, fmt.gather(dw_ref))
    assert torch.all(layer.values.grad[~fmt.valid_slots()] == 0)
    assert torch.equal(layer.to_dense(), weight * mask)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_repack_keeps_parameter_and_kernels(scheme, make_mask, kernel_cache):
    generator = torch.Generator().manual_seed(9)
    weight = torch.randn(8, 6, 3, 3, generator=generator)
    mask = make_mask(scheme, weight.shape, 0.3, generator)
    layer = SparseConv2d(weight, mask, scheme, capacity=weight.numel() // 2 + 54, cache=kernel_cache)
    parameter = layer.values
    x = torch.randn(1, 6, 8, 8, generator=generator)
    layer(x)
    builds = kernel_cache.builds
    new_weight = torch.randn(8, 6, 3, 3, generator=generator)
    new_mask = make_mask(scheme, weight.shape, 0.3, generator)
    if scheme == "pattern" and not torch.equal(new_mask.sum(dim=(1, 2, 3)), mask.sum(dim=(1, 2, 3))):
        new_mask = mask.flip(1)
    layer.repack(new_weight, new_mask)
    assert layer.values is parameter
    _close(layer(x).detach(), torch.nn.functional.conv2d(x, new_weight * new_mask, padding=1))
    assert torch.equal(layer.mask(), new_mask)
    assert kernel_cache.builds == builds


def test_sgd_step_keeps_sparsity(make_mask, kernel_cache):
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(8, 4, 3, 3, generator=generator)
    mask = make_mask("irregular", weight.shape, 0.2, generator)
    layer = SparseConv2d(weight, mask, "irregular", capacity=int(mask.sum()) + 10, cache=kernel_cache)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        layer(torch.randn(2, 4, 8, 8, generator=generator)).square().mean().backward()
        optimizer.step()
    assert torch.equal(layer.mask() | mask, mask)
    assert torch.all(layer.values.detach()[~layer.format.valid_slots()] == 0)


def test_bad_input_is_one_line(kernel_cache):
    weight = torch.randn(8, 4, 3, 3)
    layer = SparseConv2d(weight, torch.ones_like(weight, dtype=torch.bool), "irregular", cache=kernel_cache)
    for x in (torch.randn(1, 5, 8, 8), torch.randn(4, 8, 8), torch.randn(1, 4, 8, 8).double()):
        with pytest.raises(SparseFormatError) as info:
            layer(x)
        assert "\n" not in str(info.value)
    with pytest.raises(SparseFormatError):
        SparseConv2d(weight, torch.ones_like(weight, dtype=torch.bool), "irregular", stride=3)



@pytest.mark.parametrize("scheme", ["irregular", "pattern"])
def test_a_short_batch_padded_to_the_kernel_batch_is_exact(scheme, make_mask, kernel_cache):
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(8, 5, 3, 3, generator=generator)
    mask = make_mask(scheme, weight.shape, 0.2, generator)
    layer = SparseConv2d(weight, mask, scheme, stride=1, cache=kernel_cache, batch_size=4)
    x = torch.randn(3, 5, 8, 8, generator=generator, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 8, 8, 8)
    assert all(shape[0] == 4 for shape in layer._kernels), "a batch of 3 must reuse the batch-4 kernels"
    dy = torch.randn(y.shape, generator=generator)
    y.backward(dy)
    y_ref, dx_ref, dw_ref = _reference(weight, mask, x, 1, dy)
    _close(y.detach(), y_ref)
    _close(x.grad, dx_ref)
    _close(layer.values.grad, layer.format.gather(dw_ref))
