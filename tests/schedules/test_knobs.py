"""Knob resolution and search spaces: tiles divide the output, accumulators fit the registers."""

from __future__ import annotations

import pytest

from schedules.kernels.knobs import REGISTER_FLOATS, Knobs, gather_space, grad_weight_space, resolve_gather, resolve_grad_weight


@pytest.mark.parametrize("height, width, group", [(32, 32, 1), (16, 16, 4), (8, 8, 1), (7, 9, 1), (4, 4, 4)])
def test_gather_knobs_divide_the_output(height, width, group):
    default = resolve_gather(Knobs(), height, width, group)
    for knobs in [default, *gather_space(height, width, group)]:
        assert height % knobs.rows == 0 and width % knobs.width == 0
        assert knobs.rows * knobs.width * group <= 2 * REGISTER_FLOATS
    assert resolve_gather(Knobs(rows=3, width=5), 16, 16, 1) == Knobs(rows=2, width=4)


@pytest.mark.parametrize("height, width, batch, streams", [(16, 16, 64, 1), (8, 8, 64, 4), (4, 4, 3, 1)])
def test_grad_weight_knobs_divide_and_fit(height, width, batch, streams):
    for knobs in [resolve_grad_weight(Knobs(), height, width, batch, streams, 2), *grad_weight_space(height, width, batch, streams, 2)]:
        assert width % knobs.lanes == 0 and height % knobs.rows == 0
        assert batch % knobs.chunks == 0 and (batch // knobs.chunks) % knobs.images == 0
        assert knobs.rows * knobs.lanes * streams * knobs.unroll <= 2 * REGISTER_FLOATS


def test_knobs_json_round_trip():
    knobs = Knobs(rows=2, width=8, tile_outer=False, lanes=16, chunks=4, images=2, unroll=4)
    assert Knobs.from_json(knobs.to_json()) == knobs
    assert Knobs.from_json({"rows": 2}) == Knobs(rows=2)
