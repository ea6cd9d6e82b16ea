"""Built kernels, cached by what shapes their code: a mask mutation re-packs, it does not rebuild.

A kernel is keyed by (scheme, direction, weight shape, input shape, capacity, stride, target, knobs);
the index dtypes follow from the shapes and the capacity. When no knobs are given, the tuning database
is consulted first (density bucket of the capacity), then the template's defaults apply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import tvm

from schedules.database import TuningDatabase, Workload, density_bucket
from schedules.formats import SparseFormat
from schedules.kernels import Knobs, primfunc


@dataclass(frozen=True)
class KernelKey:
    """Everything the code of a kernel depends on."""

    scheme: str
    direction: str
    weight_shape: tuple[int, ...]
    x_shape: tuple[int, ...]
    capacity: int
    stride: int
    target: str
    knobs: Knobs


@dataclass(frozen=True)
class Kernel:
    """A built kernel: call it with ``(*tensors)`` in the PrimFunc's argument order.

    Attributes
    ----------
    key : KernelKey
        What it was built for.
    function : tvm.runtime.Function
        The compiled function (takes torch tensors zero-copy through DLPack, or TVM tensors).
    module : tvm.runtime.Module
        Its runtime module (for timing).
    build_seconds : float
        Wall time of the build.
    """

    key: KernelKey
    function: Any
    module: Any
    build_seconds: float

    def __call__(self, *args: Any) -> None:
        self.function(*args)


def workload(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, target: str) -> Workload:
    """The tuning-database workload of a kernel."""
    density = fmt.capacity / float(fmt.weight_shape[0] * fmt.weight_shape[1] * 9)
    return Workload(fmt.scheme, direction, tuple(fmt.weight_shape), tuple(x_shape), stride, density_bucket(density), target)


def tvm_target(name: str) -> tvm.target.Target:
    """TVM target of a name of the ``devices`` table."""
    from devices.targets import tvm_target as devices_tvm_target

    return devices_tvm_target(name)


def compile_kernel(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, target: str, knobs: Knobs) -> Any:
    """Compile one kernel to a ``tvm.runtime.Executable`` (function ``"main"``), no caching.

    Parameters
    ----------
    fmt : SparseFormat
        Packed weight; only its shapes and dtypes shape the code.
    direction : str
        ``"forward"``, ``"grad_input"`` or ``"grad_weight"``.
    x_shape : tuple of int
        NCHW input shape.
    stride : int
        1 or 2.
    target : str
        Target name of the ``devices`` table.
    knobs : Knobs
        Schedule knobs.

    Returns
    -------
    tvm.runtime.Executable
    """
    func = primfunc(direction, fmt, tuple(x_shape), stride, knobs)
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm_target(target))


def build(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, target: str, knobs: Knobs) -> Kernel:
    """Compile one kernel and load it in this process (no caching); arguments as :func:`compile_kernel`."""
    key = KernelKey(fmt.scheme, direction, tuple(fmt.weight_shape), tuple(x_shape), fmt.capacity, stride, target, knobs)
    start = time.perf_counter()
    executable = compile_kernel(fmt, direction, x_shape, stride, target, knobs)
    seconds = time.perf_counter() - start
    return Kernel(key, executable["main"], executable.mod, seconds)


class KernelCache:
    """Built kernels by :class:`KernelKey`, tuned knobs from a :class:`TuningDatabase` first.

    Parameters
    ----------
    database : TuningDatabase, optional
        Where tuned knobs are looked up; default: the tuning database in its default directory
        (the one ``python -m schedules.tune`` and ``python -m mest.compile`` use).
    target : str
        Target name of the kernels built here (the host by default).
    """

    def __init__(self, database: TuningDatabase | None = None, target: str = "x86") -> None:
        self.database = database if database is not None else TuningDatabase()
        self.target = target
        self._kernels: dict[KernelKey, Kernel] = {}
        self.build_seconds = 0.0
        self.builds = 0

    def __len__(self) -> int:
        return len(self._kernels)

    def keys(self) -> list[KernelKey]:
        """The keys of the kernels this cache has handed out."""
        return list(self._kernels)

    def knobs_for(self, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> Knobs:
        """Tuned knobs of the database for this kernel, else the defaults."""
        record = self.database.lookup(workload(fmt, direction, x_shape, stride, self.target))
        return record.knobs if record is not None else Knobs()

    def get(self, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, knobs: Knobs | None = None) -> Kernel:
        """The kernel of ``direction`` for ``fmt`` and ``x_shape``, built on first use.

        Parameters
        ----------
        fmt : SparseFormat
            Packed weight.
        direction : str
            ``"forward"``, ``"grad_input"`` or ``"grad_weight"``.
        x_shape : tuple of int
            NCHW input shape.
        stride : int
            1 or 2.
        knobs : Knobs, optional
            Explicit knobs; by default the database's, else the template's defaults.

        Returns
        -------
        Kernel
        """
        chosen = knobs if knobs is not None else self.knobs_for(fmt, direction, x_shape, stride)
        key = KernelKey(fmt.scheme, direction, tuple(fmt.weight_shape), tuple(x_shape), fmt.capacity, stride, self.target, chosen)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = build(fmt, direction, x_shape, stride, self.target, chosen)
            self._kernels[key] = kernel
            self.build_seconds += kernel.build_seconds
            self.builds += 1
        return kernel


_DEFAULT_CACHE: KernelCache | None = None


def default_cache() -> KernelCache:
    """The process-wide cache (default database, host target)."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = KernelCache()
    return _DEFAULT_CACHE
