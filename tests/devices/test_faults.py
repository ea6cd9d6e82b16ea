"""Faults: servers killed or hung mid-run, busy servers, taken ports, absent trackers and devices.

No test measures time: each remote call has a timeout, so a fault ends in an error, never a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tvm
from device_kernels import build_matmul_case

from devices.errors import DeviceError, RemoteTimeoutError, SessionClosedError
from devices.loopback import LoopbackTracker, start_tracker
from devices.sessions import LoadedModule, Session, open_session
from devices.targets import tvm_target

#: Calls of the long kernel: far more than any fault test lets it run.
LONG_RUN_CALLS = 10_000_000


def _long_running(session: Session) -> tuple[LoadedModule, list]:
    case = build_matmul_case(m=64, k=64, n=64)
    module = session.load(tvm.compile(case.module, target=tvm_target(session.target)), "long")
    args = [session.array(value) for value in (*case.inputs, case.output_buffer())]
    return module, args


def _during_long_run(session: Session, fault: Callable[[], None],
                     timeout_s: float = 60) -> DeviceError:
    """Start a measurement that would run for hours, inject ``fault`` once it runs, return the error."""
    module, args = _long_running(session)
    injector = threading.Timer(0.5, fault)
    injector.start()
    try:
        with pytest.raises(DeviceError) as raised:
            session.time(module, "matmul", args, number=LONG_RUN_CALLS, repeat=1,
                         timeout_s=timeout_s)
    finally:
        injector.cancel()
    return raised.value


@pytest.fixture
def own_rpc_session() -> Iterator[Session]:
    with open_session("rpc", "x86") as session:
        yield session


@pytest.fixture
def own_arm64_emulator(require_target_tools) -> Iterator[Session]:
    require_target_tools("arm64")
    with open_session("emulator", "arm64") as session:
        yield session


def test_rpc_server_killed_mid_run_gives_a_clear_error(own_rpc_session: Session):
    session = own_rpc_session
    error = _during_long_run(session, session.server.kill)
    assert isinstance(error, SessionClosedError)
    assert "lost its server" in str(error) and "\n" not in str(error)
    with pytest.raises(SessionClosedError, match="is closed"):
        session.array(np.zeros(3, np.float32))


def test_hung_rpc_server_times_out_and_is_stopped(own_rpc_session: Session):
    session = own_rpc_session
    server = session.server
    error = _during_long_run(session, lambda: os.killpg(server.process.pid, signal.SIGSTOP),
                             timeout_s=3)
    assert isinstance(error, RemoteTimeoutError)
    assert "did not answer within 3 s" in str(error)
    assert session.closed and not server.alive


def test_qemu_killed_mid_run_gives_a_clear_error(own_arm64_emulator: Session):
    session = own_arm64_emulator
    error = _during_long_run(
        session, lambda: [os.kill(pid, signal.SIGKILL) for pid in session.qemu_pids]
    )
    assert isinstance(error, SessionClosedError) and "lost its server" in str(error)


def test_hung_qemu_times_out(own_arm64_emulator: Session):
    session = own_arm64_emulator
    error = _during_long_run(
        session, lambda: [os.kill(pid, signal.SIGSTOP) for pid in session.qemu_pids], timeout_s=3
    )
    assert isinstance(error, RemoteTimeoutError)
    assert session.closed


def test_kernel_runner_call_times_out_and_session_stays_usable(armv7_emulator_session: Session):
    session = armv7_emulator_session
    module, args = _long_running(session)
    with pytest.raises(RemoteTimeoutError, match="did not finish within 2 s"):
        session.time(module, "matmul", args, number=LONG_RUN_CALLS, repeat=1, timeout_s=2)
    module["matmul"](*args)
    expected = session.numpy(args[0]) @ session.numpy(args[1])
    np.testing.assert_allclose(session.numpy(args[2]), expected, rtol=1e-5, atol=1e-5)


def test_busy_server_handshake_times_out(loopback_rpc_session: Session):
    """The loopback server serves one session at a time; a second client waits, then gives up."""
    with pytest.raises(RemoteTimeoutError, match="connection to"):
        open_session("rpc", "x86", address=loopback_rpc_session.server.address,
                     connect_timeout_s=1)
    assert not loopback_rpc_session.closed


def test_taken_port_is_skipped():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        with start_tracker(port=taken) as tracker:
            assert tracker.alive and tracker.port != taken and tracker.host == "127.0.0.1"


def test_tracker_without_such_device_gives_up(loopback_tracker: LoopbackTracker):
    host, port = loopback_tracker.address
    with pytest.raises(DeviceError, match="no device with key 'no-such-board'"):
        open_session(f"tracker:{host}:{port}:no-such-board", "arm64", request_timeout_s=1)


def test_absent_tracker_is_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(DeviceError, match=f"no RPC tracker answers at 127.0.0.1:{free}"):
        open_session(f"tracker:127.0.0.1:{free}:board", "arm64")


def test_servers_stop_when_the_process_that_started_them_dies():
    script = (
        "import os\n"
        "from devices.loopback import start_rpc_server\n"
        "server = start_rpc_server()\n"
        "print(server.process.pid, flush=True)\n"
        "os._exit(0)  # die without stopping it\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True, cwd=Path(__file__).resolve().parents[2])
    orphan_pid = int(result.stdout.split()[0])
    try:
        psutil.Process(orphan_pid).wait(timeout=30)  # psutil.TimeoutExpired if it lingers
    except psutil.NoSuchProcess:
        pass  # already gone
