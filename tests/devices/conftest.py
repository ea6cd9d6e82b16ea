"""Fixtures of the devices tests: each small kernel, and a session through the loopback tracker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from device_kernels import KERNEL_BUILDERS, KernelCase

from devices.loopback import LoopbackTracker
from devices.sessions import Session, open_session


@pytest.fixture(params=sorted(KERNEL_BUILDERS))
def kernel_case(request: pytest.FixtureRequest) -> KernelCase:
    """Each small kernel in turn."""
    return KERNEL_BUILDERS[request.param]()


@pytest.fixture(scope="session")
def loopback_tracker_session(loopback_tracker: LoopbackTracker) -> Iterator[Session]:
    """A session on the device registered with the loopback tracker (x86)."""
    with open_session(loopback_tracker.session_kind, "x86") as session:
        yield session
