"""Round trips, byte counts, re-packing, capacity and bad input of :mod:`schedules.formats`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schedules.errors import SparseFormatError
from schedules.formats import SCHEMES, pack, transfer

SHAPES = [(4, 3, 3, 3), (8, 16, 3, 3), (12, 33, 3, 3), (64, 32, 3, 3)]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
def test_round_trip_is_exact(scheme, shape, density, make_mask):
    generator = torch.Generator().manual_seed(SCHEMES.index(scheme) * 1000 + sum(shape) * 10 + int(density * 100))
    weight = torch.randn(shape, generator=generator)
    mask = make_mask(scheme, shape, density, generator)
    fmt = pack(scheme, weight, mask)
    assert torch.equal(fmt.to_dense(), weight * mask)
    assert torch.equal(fmt.to_mask(), mask)
    assert fmt.nnz == int(mask.sum())
    assert fmt.weight_shape == shape
    assert fmt.scheme == scheme


@pytest.mark.parametrize("scheme", SCHEMES)
def test_nbytes_match_arrays_and_indices_are_small(scheme, make_mask):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 16, 3, 3, generator=generator)
    fmt = pack(scheme, weight, make_mask(scheme, weight.shape, 0.2, generator))
    arrays = [fmt.values.numpy(), *fmt.indices.values()]
    assert fmt.nbytes == sum(a.nbytes for a in arrays)
    assert fmt.values.dtype == torch.float32
    for name, array in fmt.indices.items():
        assert array.dtype in (np.uint8, np.uint16, np.int32), name
    for direction in ("forward", "grad_input", "grad_weight"):
        assert all(isinstance(b, (np.ndarray, torch.Tensor)) for b in fmt.buffers(direction).values())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_with_weight_and_capacity(scheme, make_mask):
    generator = torch.Generator().manual_seed(2)
    shape = (16, 8, 3, 3)
    weight = torch.randn(shape, generator=generator)
    mask = make_mask(scheme, shape, 0.2, generator)
    capacity = min(int(mask.sum()) * 2 + 5, weight.numel())
    fmt = pack(scheme, weight, mask, capacity=capacity)
    assert fmt.capacity >= capacity
    assert torch.equal(fmt.to_dense(), weight * mask)
    assert int(fmt.valid_slots().sum()) == fmt.nnz
    assert torch.all(fmt.values[~fmt.valid_slots()] == 0)
    new_weight = torch.randn(shape, generator=generator)
    refilled = fmt.with_weight(new_weight)
    assert torch.equal(refilled.to_dense(), new_weight * mask)
    assert all(refilled.indices[name] is fmt.indices[name] for name in fmt.indices)


def test_bad_inputs_give_one_line_errors():
    weight = torch.randn(8, 4, 3, 3)
    mask = torch.ones(8, 4, 3, 3, dtype=torch.bool)
    cases = [
        ("irregular", weight.double(), mask),
        ("irregular", weight.reshape(8, 36), mask.reshape(8, 36)),
        ("irregular", weight, mask[:4]),
        ("irregular", weight, mask.float()),
        ("sideways", weight, mask),
        ("block", torch.randn(6, 4, 3, 3), torch.ones(6, 4, 3, 3, dtype=torch.bool)),
        ("block", weight, torch.eye(8, dtype=torch.bool)[:, :4, None, None].expand(8, 4, 3, 3).clone()),
        ("pattern", weight, mask),
        ("channel", weight, torch.eye(8, dtype=torch.bool)[:, :4, None, None].expand(8, 4, 3, 3).clone()),
    ]
    for scheme, w, m in cases:
        with pytest.raises(SparseFormatError) as info:
            pack(scheme, w, m)
        assert "\n" not in str(info.value)
    with pytest.raises(SparseFormatError):
        pack("irregular", weight, mask, capacity=3)


def test_unbalanced_pattern_is_refused(make_mask):
    generator = torch.Generator().manual_seed(3)
    mask = make_mask("pattern", (4, 8, 3, 3), 0.2, generator)
    mask[0] = False
    with pytest.raises(SparseFormatError, match="kernel counts"):
        pack("pattern", torch.randn(4, 8, 3, 3), mask)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_transfer_moves_slots_by_position(scheme, make_mask):
    generator = torch.Generator().manual_seed(6)
    shape = (8, 8, 3, 3)
    weight = torch.randn(shape, generator=generator)
    old = pack(scheme, weight, make_mask(scheme, shape, 0.3, generator))
    new_mask = make_mask(scheme, shape, 0.3, generator)
    new = pack(scheme, torch.zeros(shape), new_mask, capacity=int(new_mask.sum()) + 36)
    moved = transfer(old.values, old, new)
    assert torch.equal(new.with_values(moved).to_dense(), weight * old.to_mask() * new_mask)


@pytest.mark.parametrize("scheme", ["irregular", "block", "pattern"])
def test_buffers_depend_only_on_shape_and_capacity(scheme, make_mask):
    # A kernel is cached by capacity: masks of different counts under one capacity must give
    # buffers of the same dtypes and lengths (a count crossing 255 must not change a dtype).
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(32, 16, 3, 3, generator=generator)
    sparse, denser = make_mask(scheme, weight.shape, 0.02, generator), make_mask(scheme, weight.shape, 0.3, generator)
    capacity = pack(scheme, weight, denser).capacity
    small, large = pack(scheme, weight, sparse, capacity), pack(scheme, weight, denser, capacity)
    assert small.nnz < 255 < large.nnz
    for direction in ("forward", "grad_input", "grad_weight"):
        a, b = small.buffers(direction), large.buffers(direction)
        assert [(k, v.dtype, tuple(v.shape)) for k, v in a.items()] == [(k, v.dtype, tuple(v.shape)) for k, v in b.items()]
