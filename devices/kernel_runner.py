"""armv7 kernels executed one call at a time by our kernel runner under qemu-arm.

There is no armv7 TVM runtime wheel. A kernel library only needs a handful of runtime symbols,
which ``native/kernel_runner.cc`` provides (single-threaded), so the runner dlopens the
cross-linked library, calls one function on tensors read from a file and writes them back.
A :class:`RunnerSession` wraps that in the same interface as the other sessions: ``array``
gives host-side tensors, ``load`` a module whose functions run the runner, ``time`` runs it
with repeats (emulated: correctness only).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cache_dir
from .errors import DeviceError, RemoteTimeoutError
from .native_build import cross_build, source_digest
from .session_base import GuardedFunction, LoadedModule, Session, one_line
from .targets import TargetSpec
from .timing import Timing

RUNNER_SOURCE = "kernel_runner.cc"
_IN_MAGIC = b"MESTRUN1"
_OUT_MAGIC = b"MESTOUT1"
_KIND_TENSOR, _KIND_INT, _KIND_FLOAT = 0, 1, 2
#: NumPy dtype kind -> DLPack type code.
_DL_CODES = {"i": 0, "u": 1, "f": 2}


class RunnerTensor:
    """A tensor of a runner session: a host NumPy array the runner reads and writes back.

    Attributes
    ----------
    data : numpy.ndarray
        C-contiguous storage, updated in place after each call.
    """

    def __init__(self, data: np.ndarray) -> None:
        if data.dtype.kind not in _DL_CODES:
            raise DeviceError(f"the kernel runner takes int, uint and float tensors, not {data.dtype}")
        self.data = np.ascontiguousarray(data).copy()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor."""
        return self.data.shape

    def numpy(self) -> np.ndarray:
        """Return a copy of the current contents."""
        return self.data.copy()


def kernel_runner_program(spec: TargetSpec) -> Path:
    """Return the kernel runner built for ``spec`` (built once into the cache).

    Parameters
    ----------
    spec : TargetSpec
        A target whose ``emulation`` is ``"runner"`` (armv7).

    Returns
    -------
    pathlib.Path
    """
    digest = source_digest(RUNNER_SOURCE, spec.cross_compiler or "")
    output = cache_dir("kernel-runner", spec.name) / f"kernel_runner-{digest}"
    return cross_build(spec, RUNNER_SOURCE, output, ["-rdynamic", "-ldl"])


def _encode_arguments(args: list[Any]) -> bytes:
    parts = [_IN_MAGIC, struct.pack("<I", len(args))]
    for arg in args:
        if isinstance(arg, RunnerTensor):
            array = arg.data
            parts.append(struct.pack("<IBBHI", _KIND_TENSOR, _DL_CODES[array.dtype.kind],
                                     array.dtype.itemsize * 8, 1, array.ndim))
            parts.append(struct.pack(f"<{array.ndim}q", *array.shape))
            parts.append(struct.pack("<Q", array.nbytes))
            parts.append(array.tobytes())
        elif isinstance(arg, (bool, np.bool_)):
            raise DeviceError("the kernel runner takes no bool arguments")
        elif isinstance(arg, (int, np.integer)):
            parts.append(struct.pack("<Iq", _KIND_INT, int(arg)))
        elif isinstance(arg, (float, np.floating)):
            parts.append(struct.pack("<Id", _KIND_FLOAT, float(arg)))
        else:
            raise DeviceError(
                f"the kernel runner takes session tensors, ints and floats, not {type(arg).__name__}"
            )
    return b"".join(parts)


def _decode_results(blob: bytes, args: list[Any]) -> tuple[float, ...]:
    if blob[:8] != _OUT_MAGIC:
        raise DeviceError("the kernel runner wrote no result")
    offset = 12
    for arg in args:
        if isinstance(arg, RunnerTensor):
            size = arg.data.nbytes
            arg.data[...] = np.frombuffer(blob[offset:offset + size], arg.data.dtype).reshape(arg.shape)
            offset += size
    (repeats,) = struct.unpack_from("<I", blob, offset)
    return struct.unpack_from(f"<{repeats}d", blob, offset + 4)


class RunnerSession(Session):
    """Kernels of a target without a TVM runtime (armv7), run by our runner under qemu."""

    kind = "emulator"
    # Each call is its own runner process with its own timeout: no watchdog, nothing to cut.
    remote = False

    def __init__(self, spec: TargetSpec, call_timeout_s: float) -> None:
        spec.require_tools(need_qemu=True)
        self._runner = kernel_runner_program(spec)
        super().__init__(spec, emulated=True, call_timeout_s=call_timeout_s)
        self._calls = 0

    def describe(self) -> str:
        return f"emulator session ({self.target.name}, kernel runner under {self.target.qemu})"

    def _load_library_file(self, path: Path) -> Path:
        return path  # each call runs the runner on the library

    def load(self, lib: Any, name: str = "kernels") -> LoadedModule:
        """Export ``lib`` for the target; its functions run in the kernel runner.

        Parameters
        ----------
        lib : tvm.runtime.Executable
            Built with ``tvm_target(session.target)``; only kernel (TIR) functions, no Relax VM.
        name : str
            Base name of the exported library.

        Returns
        -------
        LoadedModule
            ``module["f"](a, b, c)`` runs ``f`` once on :class:`RunnerTensor` arguments.
        """
        return _RunnerModule(self, self._load_runtime_module(lib, name))

    def load_library(self, path: str | Path) -> LoadedModule:
        """A library already exported for the target, whose kernels run in the kernel runner."""
        return _RunnerModule(self, self._load_library_file(Path(path)))

    def relax_vm(self, module: LoadedModule) -> Any:
        """Refuse: a Relax VM needs a TVM runtime, and there is none for this target."""
        raise DeviceError(
            f"{self.describe()} runs TIR kernels only: a Relax VM needs a TVM runtime, which "
            f"{self.target.name} lacks; run whole models on arm64, or on a real "
            f"{self.target.name} device with a TVM runtime through a tracker"
        )

    def array(self, value: np.ndarray) -> RunnerTensor:
        return RunnerTensor(np.asarray(value))

    def numpy(self, tensor: RunnerTensor) -> np.ndarray:
        return tensor.numpy()

    def run(self, library: Path, func_name: str, args: list[Any], number: int = 0,
            repeat: int = 0, timeout_s: float | None = None) -> tuple[float, ...]:
        """Run ``func_name`` once on ``args`` (updated in place), then ``repeat`` timed runs.

        Parameters
        ----------
        library : pathlib.Path
            A library exported for this session's target.
        func_name : str
            The function.
        args : list
            :class:`RunnerTensor`, int and float arguments.
        number, repeat : int
            Calls per timed run and timed runs (0: no timing).
        timeout_s : float, optional
            Timeout of the whole runner process (default :attr:`call_timeout_s`).

        Returns
        -------
        tuple of float
            Mean seconds per call of each timed run.
        """
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        self._calls += 1
        in_path = self._workdir / f"call{self._calls}.in"
        out_path = self._workdir / f"call{self._calls}.out"
        in_path.write_bytes(_encode_arguments(args))
        command = [self.target.qemu, "-L", self.target.sysroot, str(self._runner), str(library),
                   func_name, str(in_path), str(out_path), str(number), str(repeat)]
        with self.guard(f"call of {func_name}", timeout_s=None):
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       start_new_session=True)
            try:
                _, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired as err:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise RemoteTimeoutError(
                    f"call of {func_name} on {self.describe()} did not finish within {timeout_s:g} s"
                ) from err
            if process.returncode != 0:
                message = stderr.decode(errors="replace").replace("kernel_runner: ", "")
                raise DeviceError(
                    f"call of {func_name} failed on {self.describe()}: "
                    f"{one_line(message) if message.strip() else f'exit status {process.returncode}'}"
                )
            timings = _decode_results(out_path.read_bytes(), args)
        in_path.unlink()
        out_path.unlink()
        return timings

    def time(self, module: Any, func_name: str, args: list[Any], number: int = 10,
             repeat: int = 5, timeout_s: float | None = None) -> Timing:
        """Time ``func_name`` in the runner (emulated: a correctness run, not a speed).

        Parameters
        ----------
        module : LoadedModule
            Loaded by this session.
        func_name : str
            The function.
        args : list
            Its arguments.
        number, repeat : int
            Calls per run and runs.
        timeout_s : float, optional
            Timeout of the whole measurement.

        Returns
        -------
        Timing
        """
        runs = self.run(module.module, func_name, args, number, max(repeat, 1), timeout_s)
        return Timing.from_runs(runs, emulated=True)


class _RunnerFunction(GuardedFunction):
    """A function of a library exported for the runner; ``self.function`` is the library path."""

    def __call__(self, *args: Any, timeout_s: float | None = None) -> None:
        self.session.run(self.function, self.name, list(args), timeout_s=timeout_s)


class _RunnerModule(LoadedModule):
    def __getitem__(self, name: str) -> GuardedFunction:
        return _RunnerFunction(self.session, name, self.module)

    get_function = __getitem__
