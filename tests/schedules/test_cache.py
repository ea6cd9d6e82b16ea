"""The kernel cache: built once per (shapes, capacity, stride, target, knobs), tuned knobs first."""

from __future__ import annotations

import torch

from schedules.cache import KernelCache, workload
from schedules.database import Record, TuningDatabase
from schedules.formats import pack
from schedules.kernels import Knobs
from schedules.layer import SparseConv2d


def test_cache_rebuilds_only_for_new_shapes_or_capacity(make_mask, kernel_cache):
    generator = torch.Generator().manual_seed(12)
    weight = torch.randn(8, 5, 3, 3, generator=generator)
    mask = make_mask("block", weight.shape, 0.3, generator)
    layer = SparseConv2d(weight, mask, "block", capacity=200, cache=kernel_cache)
    x = torch.randn(1, 5, 8, 8, generator=generator)
    layer(x)
    builds = kernel_cache.builds
    layer.repack(weight, make_mask("block", weight.shape, 0.3, generator))
    layer(x)
    assert kernel_cache.builds == builds
    layer.repack(weight, mask, capacity=240)
    layer(x)
    assert kernel_cache.builds == builds + 3
    layer(torch.randn(2, 5, 8, 8, generator=generator))
    assert kernel_cache.builds == builds + 6


def test_database_knobs_are_used(tmp_path, make_mask):
    generator = torch.Generator().manual_seed(13)
    weight = torch.randn(8, 4, 3, 3, generator=generator)
    fmt = pack("irregular", weight, make_mask("irregular", weight.shape, 0.2, generator))
    database = TuningDatabase(tmp_path / "db")
    tuned = Knobs(rows=2, width=4, tile_outer=False)
    database.commit(workload(fmt, "forward", (1, 4, 8, 8), 1, "x86"), Record(tuned, 1e-4, trials=1))
    cache = KernelCache(database)
    assert cache.get(fmt, "forward", (1, 4, 8, 8), 1).key.knobs == tuned
    assert cache.get(fmt, "grad_input", (1, 4, 8, 8), 1).key.knobs == Knobs()
