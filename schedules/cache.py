"""Built kernels, cached by what shapes their code: a mask mutation re-packs, it does not rebuild.

A kernel is keyed by (scheme, direction, weight shape, input shape, capacity, stride, target, knobs);
the index dtypes follow from the shapes and the capacity. When no knobs are given, the tuning database
is consulted first (density bucket of the capacity), then the template's defaults apply.

Two levels: the kernels this process has loaded (a dict), and exported libraries on disk under
``<cache root>/kernels/tvm-<TVM version>/<target>/<digest>.so`` (:func:`devices.cache.cache_root`), so
that another process, or the next run, loads instead of building. The digest covers the key, the full
TVM target (CPU included: a shared home directory may serve other machines) and the source of the
kernel templates and formats (a changed template never meets an old library). A library is written
through :func:`devices.files.atomic_output` (complete and fsynced before it gets its name), so a
process can never load a half-written one, and two processes building the same kernel both write a
whole file, the last rename winning. An entry that does not load is set aside (renamed, kept) and
rebuilt. Only host kernels go to disk: other targets' kernels cannot be loaded here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tvm

from devices.cache import cache_root
from devices.files import remove_stale_temporaries, set_aside
from schedules.database import TuningDatabase, Workload, density_bucket
from schedules.kernels import Knobs, primfunc
from schedules.sparse_format import SparseFormat


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
        Wall time of the build (and export), or of loading it from disk.
    loaded : bool
        True when it came from an exported library on disk, not from a build.
    """

    key: KernelKey
    function: Any
    module: Any
    build_seconds: float
    loaded: bool = False

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


KERNEL_DIRECTORY = "kernels"
#: The files whose code shapes a kernel (templates, formats and their walks): a change to any of them
#: changes every digest.
_SOURCES = ("sparse_format.py", "formats.py", "schemes/*.py", "kernels/*.py")


@functools.cache
def _source_digest() -> str:
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for pattern in _SOURCES for p in root.glob(pattern)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def library_path(directory: Path, key: KernelKey) -> Path:
    """Where the exported library of ``key`` lives under the cache ``directory``."""
    fields = {**asdict(key), "knobs": key.knobs.to_json(), "tvm_target": str(tvm_target(key.target).export()),
              "source": _source_digest()}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return directory / f"tvm-{tvm.__version__}" / key.target / f"{digest}.so"


def _load(path: Path, key: KernelKey) -> Kernel | None:
    """The kernel in ``path``; None when it is missing; a library that does not load is set aside."""
    if not path.exists():
        return None
    start = time.perf_counter()
    try:
        module = tvm.runtime.load_module(str(path))
        function = module["main"]
    except (RuntimeError, OSError, AttributeError, KeyError) as err:
        aside = set_aside(path, "corrupt")
        warnings.warn(f"built kernel {path} does not load ({type(err).__name__}); kept it as "
                      f"{aside.name if aside else '(gone)'} and rebuilt it", stacklevel=4)
        return None
    return Kernel(key, function, module, time.perf_counter() - start, loaded=True)


def _lowest_priority() -> None:
    """Give the calling thread (and the processes it starts) the lowest CPU priority (Linux: per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _store(executable: Any, path: Path, target: str) -> None:
    from devices.errors import DeviceError  # noqa: PLC0415
    from devices.targets import export_library  # noqa: PLC0415

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        export_library(executable, path, target)
    except (OSError, DeviceError) as err:  # the kernel works in this process; only the disk copy is lost
        warnings.warn(f"built kernel not kept on disk ({err})", stacklevel=2)


class KernelCache:
    """Built kernels by :class:`KernelKey`, tuned knobs from a :class:`TuningDatabase` first.

    Parameters
    ----------
    database : TuningDatabase, optional
        Where tuned knobs are looked up; default: the tuning database in its default directory
        (the one ``python -m schedules.tune`` and ``python -m mest.compile`` use).
    target : str
        Target name of the kernels built here (this machine's by default); keys use its canonical name.
    directory : str or os.PathLike, optional
        Where exported libraries are kept; default ``<cache root>/kernels``. Used for host targets only.

    Attributes
    ----------
    builds, build_seconds : int, float
        Kernels built (compiled and exported) by this cache, and the seconds it took.
    loads, load_seconds : int, float
        Kernels loaded from disk instead, and the seconds it took.
    """

    def __init__(self, database: TuningDatabase | None = None, target: str = "host",
                 directory: str | Path | None = None) -> None:
        from devices.targets import get_target  # noqa: PLC0415

        spec = get_target(target)
        self.database = database if database is not None else TuningDatabase()
        self.target = spec.name
        self.directory = Path(directory) if directory is not None else cache_root() / KERNEL_DIRECTORY
        self._on_disk = spec.is_host
        self._kernels: dict[KernelKey, Kernel] = {}
        self.build_seconds = 0.0
        self.builds = 0
        self.load_seconds = 0.0
        self.loads = 0
        self._exporter: ThreadPoolExecutor | None = None
        self._exports: list[Future] = []

    def _export(self, executable: Any, path: Path, target: str) -> None:
        # Linking the library (g++) takes about as long as the build: it runs beside the training, in
        # one worker thread at the lowest priority, which its g++ inherits (the interpreter waits for
        # it at exit; a kill leaves only a temporary).
        if self._exporter is None:
            self._exporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mest-kernel-export",
                                                initializer=_lowest_priority)
        self._exports.append(self._exporter.submit(_store, executable, path, target))

    def flush(self) -> None:
        """Wait until every built kernel is on disk."""
        for future in self._exports:
            future.result()
        self._exports.clear()

    @property
    def seconds(self) -> float:
        """Seconds spent building and loading kernels."""
        return self.build_seconds + self.load_seconds

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
            kernel = self._from_disk_or_build(fmt, key)
            self._kernels[key] = kernel
        return kernel

    def _from_disk_or_build(self, fmt: SparseFormat, key: KernelKey) -> Kernel:
        path = library_path(self.directory, key) if self._on_disk else None
        kernel = _load(path, key) if path is not None else None
        if kernel is not None:
            self.loads += 1
            self.load_seconds += kernel.build_seconds
            return kernel
        start = time.perf_counter()
        executable = compile_kernel(fmt, key.direction, key.x_shape, key.stride, key.target, key.knobs)
        kernel = Kernel(key, executable["main"], executable.mod, time.perf_counter() - start)
        if path is not None:
            self._export(executable, path, key.target)
        self.builds += 1
        self.build_seconds += kernel.build_seconds
        return kernel


_DEFAULT_CACHE: KernelCache | None = None


def default_cache() -> KernelCache:
    """The process-wide cache (default database, host target)."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = KernelCache()
    return _DEFAULT_CACHE
