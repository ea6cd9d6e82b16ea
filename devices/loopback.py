"""TVM RPC servers and trackers as child processes on 127.0.0.1, started and stopped cleanly.

Each service is ``python -m devices.serve`` in its own process group (its per-session worker
processes included), on a free port found at start (a taken port is skipped, never fatal), and
stopped by signalling the whole group, so nothing is left holding a port. Should this process
die without stopping them, they stop themselves (``--stop-with-parent``).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DeviceError
from .serve import PORT_SEARCH_SPAN, READY_PREFIX

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the OS picks it).

    Parameters
    ----------
    host : str
        Address to probe.

    Returns
    -------
    int
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class ServiceProcess:
    """A running ``devices.serve`` process (RPC server or tracker) in its own process group.

    Attributes
    ----------
    role : str
        ``"rpc server"`` or ``"rpc tracker"``.
    host : str
        Bound address.
    port : int
        Bound port.
    process : subprocess.Popen
        The child; its pid is also its process-group id.
    log_path : pathlib.Path
        Its standard error (TVM's log).
    """

    role: str
    host: str
    port: int
    process: subprocess.Popen = field(repr=False)
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return self.host, self.port

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def kill(self) -> None:
        """Kill the whole process group at once (SIGKILL), as a crash would."""
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after a few seconds; idempotent."""
        if self.alive:
            _signal_group(self.process.pid, signal.SIGTERM)
            _signal_group(self.process.pid, signal.SIGCONT)  # a stopped group handles SIGTERM now
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            _signal_group(self.process.pid, signal.SIGKILL)  # orphaned session workers
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(lines[-3:]) or "no output"


def _wait_ready(process: subprocess.Popen, log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline().decode(errors="replace").strip()
            if line.startswith(READY_PREFIX):
                return line
        if process.poll() is not None:
            raise DeviceError(
                f"devices.serve exited with status {process.returncode} before listening: "
                f"{_log_tail(log_path)}"
            )
    _signal_group(process.pid, signal.SIGKILL)
    raise DeviceError(f"devices.serve did not listen within {timeout_s:g} s: {_log_tail(log_path)}")


def _start(role: str, extra_args: list[str], host: str, port: int | None,
           startup_timeout_s: float) -> ServiceProcess:
    first_port = port if port is not None else free_port(host)
    log_dir = Path(tempfile.mkdtemp(prefix="mest-devices-"))
    log_path = log_dir / f"{role.replace(' ', '-')}.log"
    command = [
        sys.executable, "-m", "devices.serve", "--host", host, "--port", str(first_port),
        "--port-end", str(first_port + PORT_SEARCH_SPAN), "--stop-with-parent", *extra_args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
        )
    line = _wait_ready(process, log_path, startup_timeout_s)
    bound = line.split(" listening on ", 1)[1].split()[0]
    bound_host, _, bound_port = bound.rpartition(":")
    return ServiceProcess(role, bound_host, int(bound_port), process, log_path)


def start_rpc_server(
    host: str = LOOPBACK,
    port: int | None = None,
    tracker: tuple[str, int] | None = None,
    key: str = "",
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> ServiceProcess:
    """Start a TVM RPC server (``python -m devices.serve``) and wait until it listens.

    Parameters
    ----------
    host : str
        Address to bind; loopback by default (a TVM RPC server runs any code sent to it).
    port : int, optional
        First port to try; by default a free one. Taken ports are skipped.
    tracker : (str, int), optional
        Register with this tracker (then clients must come through it).
    key : str
        Device key for the tracker.
    startup_timeout_s : float
        How long to wait for it to listen.

    Returns
    -------
    ServiceProcess
    """
    extra = ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key] if tracker else []
    return _start("rpc server", extra, host, port, startup_timeout_s)


def start_tracker(
    host: str = LOOPBACK, port: int | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S
) -> ServiceProcess:
    """Start a TVM RPC tracker (``python -m devices.serve --run-tracker``) and wait for it.

    Parameters
    ----------
    host : str
        Address to bind; loopback by default.
    port : int, optional
        First port to try; by default a free one. Taken ports are skipped.
    startup_timeout_s : float
        How long to wait for it to listen.

    Returns
    -------
    ServiceProcess
    """
    return _start("rpc tracker", ["--run-tracker"], host, port, startup_timeout_s)


@dataclass
class LoopbackTracker:
    """A tracker on 127.0.0.1 with one RPC server of this machine registered under ``key``.

    Attributes
    ----------
    tracker : ServiceProcess
    server : ServiceProcess
    key : str
    """

    tracker: ServiceProcess
    server: ServiceProcess
    key: str

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the tracker (e.g. for MetaSchedule's ``RPCConfig``)."""
        return self.tracker.address

    @property
    def session_kind(self) -> str:
        """The ``open_session`` kind that requests the device: ``tracker:HOST:PORT:KEY``."""
        return f"tracker:{self.tracker.host}:{self.tracker.port}:{self.key}"

    def stop(self) -> None:
        """Stop the server, then the tracker."""
        self.server.stop()
        self.tracker.stop()

    def __enter__(self) -> LoopbackTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_loopback_tracker(key: str = "mest-loopback") -> LoopbackTracker:
    """Start a tracker and one RPC server registered with it, both on 127.0.0.1.

    Parameters
    ----------
    key : str
        The device key the server registers under.

    Returns
    -------
    LoopbackTracker
    """
    tracker = start_tracker()
    try:
        server = start_rpc_server(tracker=tracker.address, key=key)
    except DeviceError:
        tracker.stop()
        raise
    return LoopbackTracker(tracker, server, key)
