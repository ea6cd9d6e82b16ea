"""Sessions whose calls cross a connection: a TVM RPC server (direct or through a tracker) over a
socket, and the aarch64 emulator (our RPC server under qemu-aarch64) over a pipe.

A call that does not return in time is cut from the watchdog thread of
:meth:`devices.sessions.Session.guard`: socket sessions shut their socket down, the emulator
kills its qemu process. Either way the blocked call returns with an error at once.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import tvm
from tvm import rpc

from .arm64_runtime import emulator_server_program
from .errors import DeviceError, SessionClosedError
from .loopback import ServiceProcess, start_rpc_server
from .session_base import Session
from .targets import TargetSpec

CONNECT_TIMEOUT_S = 60.0
TRACKER_REQUEST_TIMEOUT_S = 60.0
TRACKER_PROBE_TIMEOUT_S = 5.0


def _connected_socket_fds() -> set[int]:
    return {
        conn.fd for conn in psutil.Process().net_connections(kind="inet")
        if conn.raddr and conn.fd >= 0
    }


def _remote_address(fds: set[int]) -> str | None:
    """``HOST:PORT`` of the peer of the connected socket among ``fds`` (the device a tracker gave)."""
    peers = {f"{conn.raddr.ip}:{conn.raddr.port}" for conn in psutil.Process().net_connections(kind="inet")
             if conn.fd in fds and conn.raddr}
    return peers.pop() if len(peers) == 1 else None


def _shutdown_fd(fd: int) -> None:
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class SocketSession(Session):
    """A TVM RPC session over TCP (``rpc`` or ``tracker`` kind)."""

    def __init__(self, spec: TargetSpec, call_timeout_s: float, kind: str, peer: str,
                 connect: Callable[[], rpc.RPCSession], owned_server: ServiceProcess | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.kind = kind
        self.peer = peer
        self._owned_server = owned_server
        self._rpc: rpc.RPCSession | None = None
        self.device_address: str | None = None  # HOST:PORT of the server, once connected
        super().__init__(spec, emulated=False, call_timeout_s=call_timeout_s)
        self._sockets_before = _connected_socket_fds()
        self._sockets: set[int] | None = None
        try:
            with self.guard(f"connection to {peer}", connect_timeout_s):
                self._rpc = connect()
        except DeviceError:
            self.close()
            raise
        self._sockets = _connected_socket_fds() - self._sockets_before
        self.device_address = _remote_address(self._sockets)

    def describe(self) -> str:
        device = f", device {self.device_address}" if self.kind == "tracker" and self.device_address else ""
        return f"{self.kind} session ({self.target.name}) at {self.peer}{device}"

    @property
    def server(self) -> ServiceProcess | None:
        """The loopback server this session started (stopped on close), else None."""
        return self._owned_server

    @property
    def device(self) -> tvm.runtime.Device:
        return self._connection().cpu(0)

    def _connection(self) -> rpc.RPCSession:
        if self._rpc is None:
            raise SessionClosedError(f"{self.describe()} is closed ({self._closed_reason})")
        return self._rpc

    def _abort(self) -> None:
        sockets = self._sockets
        if sockets is None:  # still connecting: cut whatever this connection opened
            sockets = _connected_socket_fds() - self._sockets_before
        for fd in sockets:
            _shutdown_fd(fd)

    def _peer_gone(self, err: BaseException) -> bool:
        server_died = self._owned_server is not None and not self._owned_server.alive
        return server_died or super()._peer_gone(err) or not self._peer_connected()

    def _peer_connected(self) -> bool:
        """Whether the session's socket still has its peer (a killed server leaves it closed or in
        CLOSE_WAIT, whatever error TVM reports for the broken call)."""
        states = [conn.status for conn in psutil.Process().net_connections(kind="inet")
                  if conn.fd in (self._sockets or ())]
        return bool(states) and all(state == psutil.CONN_ESTABLISHED for state in states)

    def _load_library_file(self, path: Path) -> Any:
        connection = self._connection()
        with self.guard(f"upload of {path.name}"):
            connection.upload(str(path))
            return connection.load_module(path.name)

    def _release(self) -> None:
        self._rpc = None
        if self._owned_server is not None:
            self._owned_server.stop()


def open_rpc_session(spec: TargetSpec, call_timeout_s: float,
                     address: tuple[str, int] | None = None, session_timeout_s: float = 0,
                     connect_timeout_s: float = CONNECT_TIMEOUT_S) -> SocketSession:
    """Open an ``rpc`` session: to ``address``, or to a server started for it on 127.0.0.1.

    Parameters
    ----------
    spec : TargetSpec
        What the server runs on; a server started here is the host.
    call_timeout_s : float
        Default timeout of each remote call.
    address : (str, int), optional
        A running ``devices.serve`` / ``tvm.exec.rpc_server`` (not registered with a tracker).
    session_timeout_s : float
        The server ends the session after this long (0: never).
    connect_timeout_s : float
        Timeout of the connection and handshake (a busy server answers only when free).

    Returns
    -------
    SocketSession
    """
    owned = None
    if address is None:
        if not spec.is_host:
            raise DeviceError(
                f"an rpc server started here runs {spec.name!r} code natively only for the host; "
                "give address=(host, port) of a server on such a device, or use 'emulator'"
            )
        owned = start_rpc_server()
        address = owned.address
    host, port = address
    return SocketSession(
        spec, call_timeout_s, "rpc", f"{host}:{port}",
        lambda: rpc.connect(host, port, session_timeout=session_timeout_s),
        owned_server=owned, connect_timeout_s=connect_timeout_s,
    )


def _probe(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=TRACKER_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise DeviceError(f"no RPC tracker answers at {host}:{port}: {err}") from err


def _request_from_tracker(host: str, port: int, key: str, session_timeout_s: float,
                          request_timeout_s: float, priority: int) -> rpc.RPCSession:
    tracker = rpc.connect_tracker(host, port)
    # The tracker answers a request only once a device of that key is free: bound the wait.
    tracker._sock.settimeout(request_timeout_s)  # pylint: disable=protected-access
    try:
        return tracker.request(key, priority=priority, session_timeout=session_timeout_s,
                               max_retry=1)
    except RuntimeError as err:
        raise DeviceError(
            f"no device with key {key!r} became free at tracker {host}:{port} within "
            f"{request_timeout_s:g} s ({str(err).splitlines()[0][:200]})"
        ) from err
    finally:
        tracker.close()


def free_devices(host: str, port: int, key: str) -> int:
    """How many devices of ``key`` the tracker at ``host:port`` lists as free now."""
    _probe(host, port)
    tracker = rpc.connect_tracker(host, port)
    try:
        summary = tracker.summary()
    finally:
        tracker.close()
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def open_tracker_session(spec: TargetSpec, call_timeout_s: float, host: str, port: int, key: str,
                         session_timeout_s: float = 0,
                         request_timeout_s: float = TRACKER_REQUEST_TIMEOUT_S,
                         priority: int = 1) -> SocketSession:
    """Open a ``tracker:HOST:PORT:KEY`` session: a device registered with a tracker under KEY.

    Parameters
    ----------
    spec : TargetSpec
        What the devices of that key are (compile for it).
    call_timeout_s : float
        Default timeout of each remote call.
    host, port : str, int
        The tracker.
    key : str
        Device key.
    session_timeout_s : float
        The device ends the session after this long (0: never).
    request_timeout_s : float
        How long to wait for a free device of that key.
    priority : int
        Request priority at the tracker.

    Returns
    -------
    SocketSession
    """
    _probe(host, port)
    return SocketSession(
        spec, call_timeout_s, "tracker", f"{host}:{port} key {key}",
        lambda: _request_from_tracker(host, port, key, session_timeout_s, request_timeout_s,
                                      priority),
        connect_timeout_s=request_timeout_s + CONNECT_TIMEOUT_S,
    )


class EmulatorSession(Session):
    """The aarch64 TVM runtime under qemu-aarch64, spoken to through a pipe RPC session."""

    kind = "emulator"

    def __init__(self, spec: TargetSpec, call_timeout_s: float,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        spec.require_tools(need_qemu=True)
        server_program = emulator_server_program(spec)
        self._rpc: rpc.RPCSession | None = None
        self._children_before = {child.pid for child in psutil.Process().children()}
        self._qemu_pids: set[int] = set()
        super().__init__(spec, emulated=True, call_timeout_s=call_timeout_s)
        command = [spec.qemu, "-L", spec.sysroot, str(server_program)]
        try:
            with self.guard("start of the qemu RPC server", connect_timeout_s):
                self._rpc = rpc.RPCSession(rpc._ffi_api.CreatePipeClient(*command))  # pylint: disable=protected-access
        except DeviceError:
            self.close()
            raise
        self._qemu_pids = self._new_children()

    def _new_children(self) -> set[int]:
        return {child.pid for child in psutil.Process().children()} - self._children_before

    def describe(self) -> str:
        return f"emulator session ({self.target.name}, {self.target.qemu})"

    @property
    def qemu_pids(self) -> frozenset[int]:
        """Process ids of the qemu running our RPC server (killed on close)."""
        return frozenset(self._qemu_pids)

    @property
    def device(self) -> tvm.runtime.Device:
        if self._rpc is None:
            raise SessionClosedError(f"{self.describe()} is closed ({self._closed_reason})")
        return self._rpc.cpu(0)

    def _abort(self) -> None:
        for pid in self._qemu_pids or self._new_children():
            _kill(pid)

    def _peer_gone(self, err: BaseException) -> bool:
        return any(not _running(pid) for pid in self._qemu_pids) or super()._peer_gone(err)

    def _load_library_file(self, path: Path) -> Any:
        # A pipe session has no work directory to upload to; qemu shares this file system.
        with self.guard(f"load of {path.name}"):
            return self._rpc.get_function("ffi.ModuleLoadFromFile")(str(path.resolve()))

    def _release(self) -> None:
        self._rpc = None
        for pid in self._qemu_pids:
            _kill(pid)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int) -> None:
    # Not reaped on purpose: TVM's pipe channel signals this pid again when it is destroyed,
    # which may be later (while tensors of the session live); a zombie keeps the pid from reuse.
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def open_emulator_session(spec: TargetSpec, call_timeout_s: float,
                          connect_timeout_s: float = CONNECT_TIMEOUT_S) -> EmulatorSession:
    """Open an ``emulator`` session for a target whose TVM runtime runs under qemu (arm64).

    Parameters
    ----------
    spec : TargetSpec
        A target with ``emulation == "rpc"``.
    call_timeout_s : float
        Default timeout of each remote call.
    connect_timeout_s : float
        Timeout of starting qemu and the RPC handshake.

    Returns
    -------
    EmulatorSession
    """
    if spec.emulation != "rpc":
        raise DeviceError(
            f"target {spec.name!r} has no emulator RPC session"
            + ("; it runs natively: use 'local'" if spec.is_host else "")
        )
    return EmulatorSession(spec, call_timeout_s, connect_timeout_s)
