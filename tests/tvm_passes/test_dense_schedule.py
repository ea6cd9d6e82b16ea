"""The register budget of each target and the tiles chosen from it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.targets import get_target
from tvm_passes.dense_schedule import MAX_TILE_BYTES, RegisterTile, inner_product_tile, outer_product_tile


def test_budget_comes_from_the_target_table():
    x86 = get_target("x86")
    assert RegisterTile.for_target("x86").lanes == x86.vector_bits // 32
    assert RegisterTile.for_target("arm64") == RegisterTile(lanes=4, accumulators=28)
    assert RegisterTile.for_target("armv7") == RegisterTile(lanes=4, accumulators=12)
    for name in ("x86", "arm64", "armv7"):
        tile = RegisterTile.for_target(name)
        assert tile.accumulators * tile.lanes * 4 <= MAX_TILE_BYTES
        assert tile.accumulators < get_target(name).vector_registers


def test_avx2_tiles_of_the_resnet_shapes():
    avx2 = RegisterTile(lanes=8, accumulators=12)
    channels, rows, width = outer_product_tile(avx2, 32, 32, 32)
    assert channels * rows * avx2.vectors(width) == 8 and width % 8 == 0
    assert outer_product_tile(avx2, 128, 8, 8)[2] == 8
    assert inner_product_tile(avx2, 32, 3, 3, 8) == (4, 1)  # stem grad-weight: 4 filters x 3 taps


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([RegisterTile(8, 12), RegisterTile(4, 28), RegisterTile(16, 16)]),
       st.integers(1, 300), st.integers(1, 40), st.integers(1, 70), st.integers(1, 5))
def test_tiles_divide_their_loops_and_fit_the_registers(tile, a, b, c, taps):
    channels, rows, width = outer_product_tile(tile, a, b, c)
    assert a % channels == 0 and b % rows == 0 and c % width == 0
    assert channels * rows * tile.vectors(width) <= tile.accumulators
    lanes = min(b, tile.lanes)
    filters, chans = inner_product_tile(tile, a, c, taps, lanes)
    assert a % filters == 0 and c % chans == 0
    # a 1 x 1 tile even when the taps alone exceed the budget
    assert filters * chans * taps * tile.vectors(lanes) <= max(tile.accumulators, taps * tile.vectors(lanes))
