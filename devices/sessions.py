"""One place that opens sessions: a TVM device plus a way to load a built module and time it.

``open_session(kind, target)`` with kind

- ``"local"``: this process, the host target.
- ``"rpc"``: a TVM RPC server; by default one started for the session on 127.0.0.1 (own process
  group, free port, stopped on close); ``address=(host, port)``, or the kind ``"rpc:HOST:PORT"``,
  connects to a running one (e.g. ``python -m devices.serve`` on a board).
- ``"tracker:HOST:PORT:KEY"``: a device registered with a user's tracker under KEY (a fleet of
  phones or boards); ``target`` says what it is (e.g. ``"arm64"``).
- ``"emulator"``: ``arm64`` runs our RPC server under qemu-aarch64 (a pipe session);
  ``armv7`` runs kernels one call at a time with our kernel runner under qemu-arm.

``open_fleet(kind, target)`` opens every free device of a ``tracker`` kind at once (one session for
the other kinds) as a :class:`~devices.fleet.Fleet`, whose work is spread over them.

The :class:`~devices.session_base.Session` API (re-exported here) is in :mod:`devices.session_base`;
the kinds build on it in :mod:`devices.remote` and :mod:`devices.kernel_runner`, which this module
imports (and which do not import it).
"""

from __future__ import annotations

import inspect
from typing import Any

from . import kernel_runner, remote
from .errors import DeviceError
from .fleet import Fleet
from .session_base import DEFAULT_CALL_TIMEOUT_S, GuardedFunction, LoadedModule, LocalSession, Session, one_line
from .targets import TargetSpec, get_target

__all__ = ["SESSION_KINDS", "Fleet", "GuardedFunction", "LoadedModule", "LocalSession", "Session",
           "default_session_kind", "one_line", "open_fleet", "open_session"]

SESSION_KINDS = ("local", "rpc", "rpc:HOST:PORT", "tracker:HOST:PORT:KEY", "emulator")


def default_session_kind(target: str | TargetSpec) -> str | None:
    """The session a target runs on when none is given: ``local`` for the host, the emulator for an
    emulated ARM target whose tools are installed, else None."""
    spec = get_target(target)
    if spec.is_host:
        return "local"
    if spec.emulation is not None and not spec.missing_tools(need_qemu=True):
        return "emulator"
    return None


def _parse_rpc_kind(kind: str) -> tuple[str, int]:
    parts = kind.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2].isdigit():
        raise DeviceError(f"session kind {kind!r} must be rpc:HOST:PORT")
    return parts[1], int(parts[2])


def _parse_tracker_kind(kind: str) -> tuple[str, int, str]:
    parts = kind.split(":")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[1] or not parts[3]:
        raise DeviceError(f"session kind {kind!r} must be tracker:HOST:PORT:KEY")
    return parts[1], int(parts[2]), parts[3]


def open_session(kind: str, target: str | TargetSpec = "host", **options: Any) -> Session:
    """Open a session of a kind on a target.

    Parameters
    ----------
    kind : str
        ``"local"``, ``"rpc"``, ``"rpc:HOST:PORT"``, ``"tracker:HOST:PORT:KEY"`` or ``"emulator"``.
    target : str or TargetSpec
        Name from the target table (``"host"``, ``"x86"``, ``"arm64"``/``"arm"``, ``"armv7"``).
    **options
        ``call_timeout_s`` (all kinds, default 120); for ``rpc``: ``address=(host, port)`` of
        a running server, else one is started on 127.0.0.1; ``session_timeout_s`` (rpc,
        tracker: the server ends the session after that long, default 0 = never); for
        ``tracker``: ``request_timeout_s`` to wait for a free device (default 60).

    Returns
    -------
    Session

    Raises
    ------
    DeviceError
        Unknown kind, a target the kind cannot run, a server that cannot be reached.
    UnknownTargetError
        Unknown target name.
    ToolchainMissingError
        qemu or a cross-compiler is missing (names the Debian packages).
    """
    spec = get_target(target)
    call_timeout_s = float(options.pop("call_timeout_s", DEFAULT_CALL_TIMEOUT_S))
    if kind == "local":
        opener, fixed = LocalSession, (spec, call_timeout_s)
    elif kind == "rpc":
        opener, fixed = remote.open_rpc_session, (spec, call_timeout_s)
    elif kind.startswith("rpc:"):
        opener, fixed = remote.open_rpc_session, (spec, call_timeout_s, _parse_rpc_kind(kind))
    elif kind.startswith("tracker:"):
        opener, fixed = remote.open_tracker_session, (spec, call_timeout_s,
                                                      *_parse_tracker_kind(kind))
    elif kind == "emulator" and spec.emulation == "runner":
        opener, fixed = kernel_runner.RunnerSession, (spec, call_timeout_s)
    elif kind == "emulator":
        opener, fixed = remote.open_emulator_session, (spec, call_timeout_s)
    else:
        raise DeviceError(f"unknown session kind {kind!r}; known kinds: {', '.join(SESSION_KINDS)}")
    accepted = list(inspect.signature(opener).parameters)[len(fixed):]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DeviceError(
            f"open_session({kind!r}, {spec.name!r}) takes the options "
            f"{', '.join(['call_timeout_s', *accepted])}; not {', '.join(unknown)}"
        )
    return opener(*fixed, **options)


#: How long a fleet waits for each device after the first that the tracker listed as free.
FLEET_REQUEST_TIMEOUT_S = 5.0


def open_fleet(kind: str, target: str | TargetSpec = "host", **options: Any) -> Fleet:
    """Open every free device of a ``tracker:HOST:PORT:KEY`` kind at once; one session for other kinds.

    Parameters
    ----------
    kind, target, **options
        As for :func:`open_session` (the first device is waited for as long as it waits).

    Returns
    -------
    Fleet
        As many sessions as the tracker listed free devices of the key (at least one); a device
        another client took meanwhile is not waited for.
    """
    first = open_session(kind, target, **options)
    sessions = [first]
    if kind.startswith("tracker:"):
        host, port, key = _parse_tracker_kind(kind)
        extra = {**options, "request_timeout_s": FLEET_REQUEST_TIMEOUT_S}
        try:
            for _ in range(remote.free_devices(host, port, key)):
                sessions.append(open_session(kind, target, **extra))
        except DeviceError:
            pass  # taken by another client meanwhile: the fleet works with the devices it has
    return Fleet(sessions)
