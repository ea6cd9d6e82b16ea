"""Shared helpers of the schedules tests: seeded random weights and masks for every scheme."""

from __future__ import annotations

import pytest
import torch

from schedules.patterns import NUM_PATTERNS, PATTERN_SHAPES


def random_mask(scheme: str, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
    """A mask of ``scheme`` with about ``density`` kept weights (at least one unit kept)."""
    out_channels, in_channels = shape[:2]
    if scheme == "irregular":
        mask = torch.rand(shape, generator=generator) < density
        mask[0, 0, 1, 1] = True
        return mask
    if scheme == "block":
        units = torch.rand(out_channels // 4, 1, in_channels, 3, 3, generator=generator) < density
        units[0, 0, 0, 1, 1] = True
        return units.expand(-1, 4, -1, -1, -1).reshape(shape).clone()
    if scheme == "pattern":
        kernels = max(1, round(density * 9 / 4 * in_channels))
        kernels = min(kernels, in_channels)
        mask = torch.zeros(shape, dtype=torch.bool)
        for o in range(out_channels):
            channels = torch.randperm(in_channels, generator=generator)[:kernels]
            ids = torch.randint(0, NUM_PATTERNS, (kernels,), generator=generator)
            mask[o, channels] = PATTERN_SHAPES[ids]
        return mask
    if scheme == "channel":
        filters = torch.rand(out_channels, generator=generator) < max(density, 1.0 / out_channels)
        filters[0] = True
        return filters.reshape(-1, 1, 1, 1).expand(shape).clone()
    raise ValueError(scheme)


@pytest.fixture(scope="session")
def make_mask():
    """The :func:`random_mask` helper, as a fixture."""
    return random_mask


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    """One kernel cache for the whole test session, with an empty tuning database of its own."""
    from schedules.cache import KernelCache
    from schedules.database import TuningDatabase

    return KernelCache(TuningDatabase(tmp_path_factory.mktemp("db") / "tuning.json"))
