"""The aarch64 TVM runtime (from the release's PyPI wheels) and our RPC server program for qemu.

The pinned release publishes manylinux aarch64 wheels of ``apache-tvm`` and ``apache-tvm-ffi``;
``pip download`` fetches them once into the cache, ``libtvm_runtime.so`` and ``libtvm_ffi.so`` are
kept, the wheels deleted. The server program ``native/emulator_rpc_server.cc`` is cross-linked
against them, beside them (``rpath $ORIGIN``), and is what qemu-aarch64 runs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tvm
import tvm_ffi

from .cache import cache_dir
from .errors import DeviceError
from .files import atomic_write_bytes, file_lock
from .native_build import cross_build, source_digest
from .targets import TargetSpec, get_target

WHEEL_PLATFORM = "manylinux_2_28_aarch64"
DOWNLOAD_TIMEOUT_S = 600
SERVER_SOURCE = "emulator_rpc_server.cc"
#: Member of each wheel -> file name in the runtime directory.
RUNTIME_LIBRARIES = {
    "apache-tvm": ("tvm/lib/libtvm_runtime.so", "libtvm_runtime.so"),
    "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.so", "libtvm_ffi.so"),
}


class RuntimeDownloadError(DeviceError):
    """The aarch64 runtime wheels could not be downloaded from the package index."""


def _pinned_versions() -> dict[str, str]:
    return {"apache-tvm": tvm.__version__, "apache-tvm-ffi": tvm_ffi.__version__}


def runtime_dir() -> Path:
    """Return the cache directory of the aarch64 runtime of the installed TVM release."""
    versions = _pinned_versions()
    return cache_dir("aarch64-runtime", f"tvm-{versions['apache-tvm']}-ffi-{versions['apache-tvm-ffi']}")


def _download_wheels(into: Path) -> list[Path]:
    requirements = [f"{name}=={version}" for name, version in _pinned_versions().items()]
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--platform", WHEEL_PLATFORM, "--python-version", python_version,
        "--disable-pip-version-check", "-q", "-d", str(into), *requirements,
    ]
    what = f"the aarch64 wheels of {' and '.join(requirements)}"
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeDownloadError(f"downloading {what} took over {DOWNLOAD_TIMEOUT_S} s") from err
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise RuntimeDownloadError(
            f"could not download {what} from the package index (needed once, cached in "
            f"{into.parent}): {last}"
        )
    return sorted(into.glob("*.whl"))


def _extract_library(wheels: list[Path], project: str, member: str, destination: Path) -> None:
    prefix = project.replace("-", "_") + "-"
    for wheel in wheels:
        if wheel.name.startswith(prefix):
            with zipfile.ZipFile(wheel) as archive:
                atomic_write_bytes(destination, archive.read(member), mode=0o777)
            return
    raise RuntimeDownloadError(f"pip did not deliver a wheel of {project} for {WHEEL_PLATFORM}")


def aarch64_runtime() -> Path:
    """Return the directory holding the aarch64 ``libtvm_runtime.so`` and ``libtvm_ffi.so``.

    Downloads the wheels of the installed TVM release once (~100 MB, a few seconds), keeps the two
    libraries (~5 MB) and deletes the wheels.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    RuntimeDownloadError
        When the package index cannot be reached or has no such wheel.
    """
    directory = runtime_dir()
    wanted = [directory / name for _, name in RUNTIME_LIBRARIES.values()]
    if all(path.exists() for path in wanted):
        return directory
    with file_lock(directory):
        if all(path.exists() for path in wanted):
            return directory
        with tempfile.TemporaryDirectory(dir=directory, prefix=".wheels-") as download:
            wheels = _download_wheels(Path(download))
            for project, (member, name) in RUNTIME_LIBRARIES.items():
                _extract_library(wheels, project, member, directory / name)
    return directory


def emulator_server_program(spec: TargetSpec | None = None) -> Path:
    """Return our RPC server program for qemu-aarch64, building it once if needed.

    Parameters
    ----------
    spec : TargetSpec, optional
        The aarch64 target (default ``get_target("arm64")``).

    Returns
    -------
    pathlib.Path
        Executable beside the runtime libraries it links.
    """
    spec = spec or get_target("arm64")
    directory = aarch64_runtime()
    digest = source_digest(SERVER_SOURCE, spec.cross_compiler or "")
    output = directory / f"mest_rpc_server-{digest}"
    flags = [f"-L{directory}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
             "-Wl,-rpath,$ORIGIN"]
    return cross_build(spec, SERVER_SOURCE, output, flags)
