"""Shared fixtures of the schedules tests: a mask maker and one kernel cache per session."""

from __future__ import annotations

import pytest

from schedules.masks import random_mask


@pytest.fixture(scope="session")
def make_mask():
    """:func:`schedules.masks.random_mask`, as a fixture."""
    return random_mask


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    """One kernel cache for the whole test session, with an empty tuning database and disk cache of its own."""
    from schedules.cache import KernelCache
    from schedules.database import TuningDatabase

    return KernelCache(TuningDatabase(tmp_path_factory.mktemp("db")), directory=tmp_path_factory.mktemp("kernels"))
