"""Serve this machine as a TVM RPC device, or run an RPC tracker: ``python -m devices.serve``.

A thin wrapper over TVM's own RPC server and tracker (``tvm.rpc``) that binds to 127.0.0.1 unless
told otherwise, and prints one line ``devices.serve: <role> listening on HOST:PORT`` once it
accepts connections (the loopback fixtures and :mod:`devices.loopback` wait for that line).

Security: a TVM RPC server executes any code a client sends it (it loads and runs shared
libraries). Bind it to a public address only on a network you trust.

Examples
--------
Register this machine with a user's tracker under the key ``laptop``::

    python -m devices.serve --tracker 10.0.0.5:9190 --key laptop --host 0.0.0.0

Serve direct connections on loopback (``open_session("rpc", address=("127.0.0.1", 9090))``)::

    python -m devices.serve --port 9090

Run a tracker on loopback::

    python -m devices.serve --run-tracker --port 9190
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from devices.cli import CommandParser

READY_PREFIX = "devices.serve:"
DEFAULT_SERVER_PORT = 9090
DEFAULT_TRACKER_PORT = 9190
PORT_SEARCH_SPAN = 64
PARENT_POLL_S = 1.0


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m devices.serve``."""
    parser = CommandParser(
        prog="python -m devices.serve",
        description="Serve this machine as a TVM RPC device (or run a tracker). "
        "A TVM RPC server executes any code sent to it: keep it on loopback or a trusted network.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"first port to try (default {DEFAULT_SERVER_PORT}, "
                        f"{DEFAULT_TRACKER_PORT} for a tracker)")
    parser.add_argument("--port-end", type=int, default=None,
                        help=f"end of the port range searched (default port + {PORT_SEARCH_SPAN})")
    parser.add_argument("--tracker", type=_parse_address, default=None,
                        help="HOST:PORT of a tracker to register this device with (default: none, serve "
                        "direct connections)")
    parser.add_argument("--key", default="", help="device key under which the tracker lists it (default: empty; "
                        "needed with --tracker)")
    parser.add_argument("--run-tracker", action="store_true",
                        help="run an RPC tracker instead of a device server (default: a device server)")
    parser.add_argument("--stop-with-parent", action="store_true",
                        help="stop (with the whole process group) when the parent process exits (default: "
                        "keep running)")
    return parser


def _stop_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _wait(listener: threading.Thread) -> int:
    try:
        listener.join()
    except KeyboardInterrupt:
        # TVM's listener thread is not a daemon and never returns: leave without waiting for it.
        os._exit(0)
    return 0


def _serve_device(args: argparse.Namespace, port: int, port_end: int) -> int:
    # TVM's rpc.Server would start a second Python process (a PopenWorker) to host this same
    # state; running it here keeps the server one process group and halves its start-up time.
    from tvm.rpc.server import PopenRPCServerState

    state = PopenRPCServerState(
        args.host, port, port_end, tracker_addr=args.tracker, key=args.key, silent=True
    )
    registered = f" (tracker {args.tracker[0]}:{args.tracker[1]}, key {args.key})" if args.tracker else ""
    print(f"{READY_PREFIX} rpc server listening on {args.host}:{state.port}{registered}", flush=True)
    return _wait(state.thread)


def _serve_tracker(args: argparse.Namespace, port: int, port_end: int) -> int:
    from tvm.rpc.tracker import PopenTrackerServerState

    state = PopenTrackerServerState(args.host, port, port_end, silent=True)
    print(f"{READY_PREFIX} rpc tracker listening on {args.host}:{state.port}", flush=True)
    return _wait(state.thread)


def _skip_torch() -> None:
    # tvm_ffi imports torch, if installed, only to speed up DLPack hand-over with it; a server
    # never hands tensors to torch, and torch doubles its start-up time. A None entry in
    # sys.modules makes "import torch" raise ImportError, which tvm_ffi handles.
    sys.modules.setdefault("torch", None)


def main(argv: list[str] | None = None) -> int:
    """Run the server (or tracker) until killed.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    args = build_parser().parse_args(argv)
    _skip_torch()
    if args.tracker and not args.key:
        build_parser().error("--tracker needs --key (the name the tracker lists this device under)")
    if args.stop_with_parent:
        _stop_with_parent()
    default_port = DEFAULT_TRACKER_PORT if args.run_tracker else DEFAULT_SERVER_PORT
    port = args.port if args.port is not None else default_port
    port_end = args.port_end if args.port_end is not None else port + PORT_SEARCH_SPAN
    try:
        if args.run_tracker:
            return _serve_tracker(args, port, port_end)
        return _serve_device(args, port, port_end)
    except (OSError, ValueError) as err:
        print(f"devices.serve: cannot listen on {args.host}:{port}-{port_end}: {err}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
