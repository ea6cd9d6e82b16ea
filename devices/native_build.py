"""Cross-building the two small programs of ``devices/native`` into the cache, once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import tvm_ffi

from .errors import DeviceError
from .targets import TargetSpec

NATIVE_SOURCES = Path(__file__).parent / "native"
COMPILE_TIMEOUT_S = 300


@contextlib.contextmanager
def file_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (processes sharing the cache take turns).

    Parameters
    ----------
    directory : pathlib.Path
        An existing directory.
    """
    with open(directory / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tvm_ffi_include_dir() -> Path:
    """Return the include directory of the installed tvm_ffi (headers are the same on every CPU)."""
    return Path(tvm_ffi.__file__).parent / "include"


def source_digest(source_name: str, *extra: str) -> str:
    """Return a short hash of a native source and anything else its binary depends on.

    Parameters
    ----------
    source_name : str
        File name under ``devices/native``.
    *extra : str
        Versions, compiler names and flags that change the binary.

    Returns
    -------
    str
        12 hex digits, used in cache paths so a changed source is rebuilt.
    """
    digest = hashlib.sha256((NATIVE_SOURCES / source_name).read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:12]


def cross_build(spec: TargetSpec, source_name: str, output: Path, flags: list[str]) -> Path:
    """Compile and link one C++ program of ``devices/native`` for a target, unless already built.

    Parameters
    ----------
    spec : TargetSpec
        The target; its cross-compiler must be installed.
    source_name : str
        File name under ``devices/native``.
    output : pathlib.Path
        Where the executable goes (written atomically; kept if it exists).
    flags : list of str
        Extra compiler/linker flags (libraries last).

    Returns
    -------
    pathlib.Path
        ``output``.

    Raises
    ------
    DeviceError
        When the compiler fails (its last lines are in the message).
    """
    spec.require_tools(need_qemu=False)
    if output.exists():
        return output
    with file_lock(output.parent):
        if output.exists():
            return output
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        command = [
            spec.cross_compiler or "g++", "-std=c++17", "-O2", "-Wno-psabi",
            f"-I{tvm_ffi_include_dir()}", str(NATIVE_SOURCES / source_name), "-o", str(tmp),
            *flags,
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
            )
            if result.returncode != 0:
                tail = " | ".join(result.stderr.strip().splitlines()[-3:])
                raise DeviceError(f"building {source_name} for {spec.name} failed: {tail}")
            os.replace(tmp, output)
        except subprocess.TimeoutExpired as err:
            raise DeviceError(
                f"building {source_name} for {spec.name} took over {COMPILE_TIMEOUT_S} s"
            ) from err
        finally:
            if tmp.exists():
                tmp.unlink()
    return output
