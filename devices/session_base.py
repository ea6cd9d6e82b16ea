"""The session API: a TVM device plus a way to load a built module, call it and time it, with timeouts.

:class:`Session` is what every kind of session is (``local`` here, ``rpc`` / ``tracker`` / qemu
``emulator`` in :mod:`devices.remote`, the armv7 kernel runner in :mod:`devices.kernel_runner`);
:func:`devices.sessions.open_session` opens one of any kind.

Every remote call goes through :meth:`Session.guard`, which has a timeout: when it expires the
connection is cut (the qemu process killed, the socket shut down), the call raises
:class:`~devices.errors.RemoteTimeoutError` and the session is closed. A server that dies during
a call gives :class:`~devices.errors.SessionClosedError`, never a hang.
"""

from __future__ import annotations

import abc
import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm.relax

from .errors import DeviceError, RemoteTimeoutError, SessionClosedError
from .targets import TargetSpec, export_library
from .timing import Timing

DEFAULT_CALL_TIMEOUT_S = 120.0
ABORT_RETRY_S = 0.25
#: What TVM raises for a failed call (tvm_ffi maps the C++ error kinds to these built-ins).
_REMOTE_FAILURES = (RuntimeError, OSError, ValueError, TypeError, IndexError, KeyError)
#: A frame of a C++ backtrace in a TVM error ("12: tvm::runtime::...").
_FRAME = re.compile(r"^\d+: ")
#: Words in TVM's errors that mean the other end of the connection is gone.
_CONNECTION_LOST_MARKERS = (
    "kShutdown", "SockChannel", "Broken pipe", "Connection reset", "Pipe read error",
    "Pipe write error", "RPCSessionTimeoutError", "connection closed",
)


def one_line(text: str, limit: int = 300) -> str:
    """Squeeze an error text (TVM's span several lines, RPC ones carry a traceback) into one line.

    Parameters
    ----------
    text : str
        The error text.
    limit : int
        Maximum length kept.

    Returns
    -------
    str
    """
    kept = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Traceback", "File ", "File:")) or _FRAME.match(line):
            continue
        kept.append(line.removeprefix("RPCError: Error caught from RPC call:").strip())
    squeezed = " ".join(part for part in kept if part)
    return squeezed[:limit] if squeezed else "no message"


def _error_summary(err: BaseException) -> str:
    return one_line(str(err)) if str(err).strip() else type(err).__name__


class Session(abc.ABC):
    """A device to run built modules on; use as a context manager or call :meth:`close`.

    Attributes
    ----------
    kind : str
        ``"local"``, ``"rpc"``, ``"tracker"`` or ``"emulator"``.
    target : TargetSpec
        What the device is (what to compile for).
    emulated : bool
        True when timings are correctness runs only (qemu).
    call_timeout_s : float
        Default timeout of each remote call.
    """

    kind: str = "session"
    #: Whether calls leave this process (and so need a watchdog).
    remote: bool = True

    def __init__(self, target: TargetSpec, emulated: bool, call_timeout_s: float) -> None:
        self.target = target
        self.emulated = emulated
        self.call_timeout_s = call_timeout_s
        self._closed_reason: str | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix=f"mest-{self.kind}-"))
        self._exports = 0

    # -- what subclasses provide -------------------------------------------------------------
    @property
    def device(self) -> tvm.runtime.Device:
        """The ``tvm.runtime.Device`` of this session."""
        raise DeviceError(f"a {self.kind} session of target {self.target.name} has no TVM device")

    def describe(self) -> str:
        """One line naming the session, for messages."""
        return f"{self.kind} session ({self.target.name})"

    def _load_runtime_module(self, lib: Any, name: str) -> Any:
        """Export / upload ``lib`` as the session needs and return its runtime module."""
        return self._load_library_file(self._export(lib, name))

    @abc.abstractmethod
    def _load_library_file(self, path: Path) -> Any:
        """Load an exported library (built for :attr:`target`) on the device; its runtime module."""

    def _abort(self) -> None:
        """Cut the connection so that a blocked call returns (called from the watchdog thread)."""

    def _peer_gone(self, err: BaseException) -> bool:
        return any(marker in str(err) for marker in _CONNECTION_LOST_MARKERS)

    def _release(self) -> None:
        """Free the connection and the processes of the session."""

    # -- shared behaviour -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the session was closed (by :meth:`close` or after a lost connection)."""
        return self._closed_reason is not None

    @contextlib.contextmanager
    def guard(self, what: str, timeout_s: float | None = None) -> Iterator[None]:
        """Run remote calls with a timeout and turn their failures into one-line DeviceErrors.

        Parameters
        ----------
        what : str
            What is being done, for the message (e.g. ``"call of matmul"``).
        timeout_s : float, optional
            Seconds before the connection is cut (default :attr:`call_timeout_s`).

        Raises
        ------
        SessionClosedError
            The session was closed, or the server went away during the call.
        RemoteTimeoutError
            The call did not return in time; the session is closed.
        DeviceError
            Any other failure of the call (e.g. a kernel's shape check).
        """
        if self._closed_reason is not None:
            raise SessionClosedError(f"{what}: {self.describe()} is closed ({self._closed_reason})")
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        expired, finished = threading.Event(), threading.Event()
        if self.remote:
            threading.Thread(target=self._watch, args=(timeout_s, expired, finished),
                             name=f"watchdog: {what}", daemon=True).start()
        try:
            yield
        except _REMOTE_FAILURES as err:
            if isinstance(err, DeviceError):
                raise
            raise self._translate(what, timeout_s, expired.is_set(), err) from err
        finally:
            finished.set()
        if expired.is_set():  # the call returned just as the watchdog cut the connection
            raise self._timed_out(what, timeout_s)

    def _watch(self, timeout_s: float, expired: threading.Event,
               finished: threading.Event) -> None:
        if finished.wait(timeout_s):
            return
        expired.set()
        # Cut again until the call returns: a connection may not exist yet at the first cut.
        while not finished.is_set():
            self._abort()
            finished.wait(ABORT_RETRY_S)

    def _timed_out(self, what: str, timeout_s: float) -> RemoteTimeoutError:
        self._lost(f"{what} exceeded {timeout_s:g} s")
        return RemoteTimeoutError(
            f"{what} on {self.describe()} did not answer within {timeout_s:g} s; session aborted"
        )

    def _translate(self, what: str, timeout_s: float, expired: bool,
                   err: BaseException) -> DeviceError:
        if expired:
            return self._timed_out(what, timeout_s)
        if self._peer_gone(err):
            self._lost(f"connection lost during {what}")
            return SessionClosedError(
                f"{what}: {self.describe()} lost its server (killed or crashed): {_error_summary(err)}"
            )
        return DeviceError(f"{what} failed on {self.describe()}: {_error_summary(err)}")

    def _lost(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._release()

    def load(self, lib: Any, name: str = "kernels") -> LoadedModule:
        """Make a built module runnable on this session's device.

        Parameters
        ----------
        lib : tvm.runtime.Executable or tvm.runtime.Module
            The result of ``tvm.compile(mod, tvm_target(session.target))``; exported,
            cross-linked and uploaded as the session needs.
        name : str
            Base name of the exported library file.

        Returns
        -------
        LoadedModule
            Whose functions are called with a timeout (``module["f"](a, b, c)``).
        """
        return LoadedModule(self, self._load_runtime_module(lib, name))

    def load_library(self, path: str | Path) -> LoadedModule:
        """Load a library already exported for :attr:`target` (cross-linked for ARM) on the device.

        Parameters
        ----------
        path : str or Path
            The ``.so`` (e.g. a cached training step of :mod:`tvm_passes.training_cache`).

        Returns
        -------
        LoadedModule
        """
        return LoadedModule(self, self._load_library_file(Path(path)))

    def relax_vm(self, module: LoadedModule) -> tvm.relax.VirtualMachine:
        """A Relax VM of a loaded executable on this session's device (call it with :meth:`call_relax`)."""
        with self.guard("start of the Relax VM"):
            return tvm.relax.VirtualMachine(module.module, self.device)

    def call_relax(self, vm: tvm.relax.VirtualMachine, func_name: str, args: list[Any],
                   timeout_s: float | None = None) -> list[Any]:
        """Call a Relax function with tensors of this session; its outputs stay on the device.

        Goes through the VM's stateful interface (``set_input``, ``invoke_stateful``,
        ``get_outputs``), which works over RPC, where a returned tuple is not iterable here.

        Parameters
        ----------
        vm : tvm.relax.VirtualMachine
            From :meth:`relax_vm`.
        func_name : str
            The Relax function.
        args : list of tvm.runtime.Tensor
            Its arguments, in order (made by :meth:`array`, or outputs of an earlier call).
        timeout_s : float, optional
            Timeout of the call (default :attr:`call_timeout_s`).

        Returns
        -------
        list of tvm.runtime.Tensor
            The outputs on the device, nested tuples flattened in order.
        """
        with self.guard(f"Relax VM run of {func_name}", timeout_s):
            vm.set_input(func_name, *args)
            vm.invoke_stateful(func_name)
            return _flatten(vm.get_outputs(func_name))

    def _export(self, lib: Any, name: str) -> Path:
        # Each export gets a file of its own: a library loaded before may be mapped by the loader
        # still (dlopen of the same path returns it), and rewriting it in place crashes the server.
        self._exports += 1
        return export_library(lib, self._workdir / f"{name}-{self._exports}.so", self.target)

    def array(self, value: np.ndarray) -> Any:
        """Copy a NumPy array to the session's device.

        Parameters
        ----------
        value : numpy.ndarray

        Returns
        -------
        tvm.runtime.Tensor
            On :attr:`device` (a host-side holder for runner sessions).
        """
        with self.guard("copy to device"):
            return tvm.runtime.tensor(np.require(value, requirements="C"), self.device)

    def numpy(self, tensor: Any) -> np.ndarray:
        """Copy a tensor of this session back into a NumPy array.

        Parameters
        ----------
        tensor : tvm.runtime.Tensor
            A tensor made by :meth:`array` (or written by a function of this session).

        Returns
        -------
        numpy.ndarray
        """
        with self.guard("copy from device"):
            return tensor.numpy()

    def time(self, module: Any, func_name: str, args: list[Any], number: int = 10,
             repeat: int = 5, timeout_s: float | None = None) -> Timing:
        """Time a function with TVM's ``time_evaluator``: ``repeat`` runs of ``number`` calls.

        Parameters
        ----------
        module : LoadedModule or tvm.runtime.Module
            A module loaded by this session.
        func_name : str
            The function to time.
        args : list
            Its arguments (tensors of this session).
        number : int
            Calls per run (their mean is one sample).
        repeat : int
            Runs (samples).
        timeout_s : float, optional
            Timeout of the whole measurement (default :attr:`call_timeout_s`).

        Returns
        -------
        Timing
            ``emulated`` is True under qemu: a correctness run, not a speed.
        """
        runtime_module = module.module if isinstance(module, LoadedModule) else module
        with self.guard(f"timing of {func_name}", timeout_s):
            evaluator = runtime_module.time_evaluator(
                func_name, self.device, number=number, repeat=repeat
            )
            result = evaluator(*args)
        return Timing.from_runs(result.results, self.emulated)

    def run_relax(self, module: LoadedModule, inputs: list[np.ndarray],
                  func_name: str = "main", timeout_s: float | None = None) -> list[np.ndarray]:
        """Run a function of a Relax executable in the VM of this session; return its outputs.

        Parameters
        ----------
        module : LoadedModule
            ``session.load(tvm.compile(relax_mod, tvm_target(session.target)))``.
        inputs : list of numpy.ndarray
            The function's arguments, in order.
        func_name : str
            The Relax function.
        timeout_s : float, optional
            Timeout of the whole run (default :attr:`call_timeout_s`).

        Returns
        -------
        list of numpy.ndarray
            The outputs, nested tuples flattened in order.
        """
        vm = self.relax_vm(module)
        outputs = self.call_relax(vm, func_name, [self.array(value) for value in inputs], timeout_s)
        return [self.numpy(tensor) for tensor in outputs]

    def close(self) -> None:
        """Close the connection, stop what the session started, delete its files; idempotent."""
        if self._closed_reason is None:
            self._closed_reason = "closed"
            self._release()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


class LoadedModule:
    """A module loaded by a session; ``module["name"]`` returns a function called with a timeout.

    Attributes
    ----------
    session : Session
        The session it lives in.
    module : tvm.runtime.Module
        The underlying runtime module (for e.g. ``relax.VirtualMachine``; calls made on it
        directly are only protected inside ``session.guard(...)``).
    """

    def __init__(self, session: Session, module: Any) -> None:
        self.session = session
        self.module = module

    def __getitem__(self, name: str) -> GuardedFunction:
        with self.session.guard(f"lookup of {name}"):
            function = self.module[name]
        return GuardedFunction(self.session, name, function)

    get_function = __getitem__


class GuardedFunction:
    """A function of a loaded module whose calls go through :meth:`Session.guard`."""

    def __init__(self, session: Session, name: str, function: Any) -> None:
        self.session = session
        self.name = name
        self.function = function

    def __call__(self, *args: Any, timeout_s: float | None = None) -> Any:
        """Call the function with ``args``; see :meth:`Session.guard` for errors."""
        with self.session.guard(f"call of {self.name}", timeout_s):
            return self.function(*args)


class LocalSession(Session):
    """This process on the host target (no timeouts needed: nothing is remote)."""

    kind = "local"
    remote = False

    def __init__(self, target: TargetSpec, call_timeout_s: float) -> None:
        if not target.is_host:
            raise DeviceError(
                f"target {target.name!r} cannot run in this process; use "
                f"open_session('emulator', {target.name!r}) or a tracker"
            )
        super().__init__(target, emulated=False, call_timeout_s=call_timeout_s)

    @property
    def device(self) -> tvm.runtime.Device:
        return tvm.cpu(0)

    def _load_runtime_module(self, lib: Any, name: str) -> Any:
        return lib.jit() if isinstance(lib, tvm.runtime.Executable) else lib

    def _load_library_file(self, path: Path) -> Any:
        return tvm.runtime.load_module(str(path))
