"""Cross-building the two small programs of ``devices/native`` into the cache, once."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import tvm_ffi

from .errors import DeviceError
from .files import atomic_output, file_lock, remove_stale_temporaries
from .targets import TargetSpec

NATIVE_SOURCES = Path(__file__).parent / "native"
COMPILE_TIMEOUT_S = 300


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
        remove_stale_temporaries(output.parent)
        with atomic_output(output) as tmp:
            command = [
                spec.cross_compiler or "g++", "-std=c++17", "-O2", "-Wno-psabi",
                f"-I{tvm_ffi_include_dir()}", str(NATIVE_SOURCES / source_name), "-o", str(tmp),
                *flags,
            ]
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
                )
            except subprocess.TimeoutExpired as err:
                raise DeviceError(
                    f"building {source_name} for {spec.name} took over {COMPILE_TIMEOUT_S} s"
                ) from err
            if result.returncode != 0:
                tail = " | ".join(result.stderr.strip().splitlines()[-3:])
                raise DeviceError(f"building {source_name} for {spec.name} failed: {tail}")
    return output
