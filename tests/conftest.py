"""Fixtures shared by the rooms' tests. Each room keeps to its own section."""

from __future__ import annotations

from schedules.threads import configure_threads

# Before any test module imports torch: TVM's and PyTorch's thread pools must not spin together.
configure_threads()

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from devices.loopback import LoopbackTracker
    from devices.sessions import Session

# ---- every room: the commands' parsers ----


@pytest.fixture(scope="session")
def flags_without_default() -> Callable[..., list[str]]:
    """``flags_without_default(parser)``: the optional flags whose help line does not say their default."""
    import argparse

    def check(parser: argparse.ArgumentParser) -> list[str]:
        formatter = parser._get_formatter()
        return [action.option_strings[0] for action in parser._actions
                if action.option_strings and not action.required and not isinstance(action, argparse._HelpAction)
                and "default" not in formatter._expand_help(action)]

    return check


# ---- devices: loopback RPC server and tracker, ARM emulator sessions (once per test session) ----
# Other rooms' tests may use these: compile with devices.targets.tvm_target(session.target) and
# run through session.load / session.array / session.numpy / session.time.

# devices (and so tvm) are imported inside the fixtures: tests that use none of them do not pay
# for importing TVM.


def skip_unless_target_tools(target: str, need_qemu: bool = True) -> None:
    """Skip the calling test when the cross-compiler or qemu of ``target`` is not installed.

    The reason names the Debian packages (``.ci/run`` installs them, so CI never skips).
    """
    from devices.errors import ToolchainMissingError
    from devices.targets import get_target

    try:
        get_target(target).require_tools(need_qemu=need_qemu)
    except ToolchainMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def require_target_tools() -> Callable[..., None]:
    """``require_target_tools("armv7", need_qemu=False)`` skips the test when tools are missing."""
    return skip_unless_target_tools


@pytest.fixture(scope="session")
def loopback_rpc_session() -> Iterator[Session]:
    """An ``rpc`` session (this machine's target) to a TVM RPC server started on 127.0.0.1 for the test session.

    The server serves one connection at a time: use this session, do not open another to it.
    """
    from devices.sessions import open_session

    with open_session("rpc", "host") as session:
        yield session


@pytest.fixture(scope="session")
def loopback_tracker() -> Iterator[LoopbackTracker]:
    """A tracker on 127.0.0.1 with one RPC server of this machine registered under ``loopback_tracker.key``.

    ``open_session(loopback_tracker.session_kind, "host")`` requests that device; MetaSchedule's
    ``RPCConfig`` takes ``loopback_tracker.address`` and ``.key``.
    """
    from devices.loopback import start_loopback_tracker

    with start_loopback_tracker() as tracker:
        yield tracker


@pytest.fixture(scope="session")
def arm64_emulator_session() -> Iterator[Session]:
    """The aarch64 TVM runtime under qemu-aarch64 (pipe RPC); timings are correctness-only."""
    skip_unless_target_tools("arm64")
    from devices.sessions import open_session

    with open_session("emulator", "arm64") as session:
        yield session


@pytest.fixture(scope="session")
def armv7_emulator_session() -> Iterator[Session]:
    """armv7 kernels run one call at a time by our kernel runner under qemu-arm."""
    skip_unless_target_tools("armv7")
    from devices.sessions import open_session

    with open_session("emulator", "armv7") as session:
        yield session
