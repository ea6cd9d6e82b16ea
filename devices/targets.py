"""The one table of targets: what TVM target, cross-compiler, emulator and capabilities each has.

Every question "can this target do X" is answered here, from a :class:`TargetSpec`. Other rooms
name targets by string (``"x86"`` = x86-64, ``"arm64"``/``"arm"``, ``"armv7"``, and ``"host"`` = this
machine, whichever of them it is: :func:`host_target_name`) and ask this module. The host's entry is
native (its own CPU, no cross-compiler); on an aarch64 machine ``arm64`` is the host and ``x86`` a
cross target (compile and link only: there is no x86 emulator session).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.support import cc
from tvm.target import codegen

from .errors import DeviceError, ToolchainMissingError, UnknownTargetError
from .files import atomic_output

#: How a non-host target's kernels are executed on this machine.
EMULATION_RPC = "rpc"  # the TVM runtime itself runs under qemu, spoken to through a pipe RPC session
EMULATION_RUNNER = "runner"  # no TVM runtime for it: a small runner program of ours calls one kernel


@dataclass(frozen=True)
class TargetSpec:
    """One target: how to compile for it, link for it, and run on it from this machine.

    Attributes
    ----------
    name : str
        Canonical name (``"x86"``, ``"arm64"``, ``"armv7"``).
    description : str
        One line for reports.
    tvm_target : dict
        The TVM target in JSON form (``tvm.target.Target(spec.tvm_target)``).
    cross_compiler : str or None
        The C++ compiler driver that links shared libraries for it; None for the host's own.
    qemu : str or None
        The qemu user-mode program that executes its binaries here; None for the host.
    sysroot : str or None
        The directory given to qemu as ``-L`` (the target's libc), None for the host.
    debian_packages : tuple of str
        The Debian packages that provide the cross-compiler, sysroot and qemu.
    vector_bits : int
        Width of its SIMD registers (NEON: 128).
    vector_registers : int
        How many SIMD registers it has (AVX2: 16, AVX-512: 32, aarch64 NEON: 32, armv7 NEON: 16
        quad registers); register-tiled schedules size their accumulators by it.
    pointer_bits : int
        64 or 32.
    is_host : bool
        True when its code runs natively in this process.
    emulation : str or None
        ``"rpc"`` (TVM runtime under qemu, full RPC session), ``"runner"`` (our kernel runner under
        qemu) or None for the host.
    has_neon : bool
        Whether kernels may use ARM NEON instructions.
    """

    name: str
    description: str
    tvm_target: dict[str, Any] = field(hash=False)
    cross_compiler: str | None
    qemu: str | None
    sysroot: str | None
    debian_packages: tuple[str, ...]
    vector_bits: int
    vector_registers: int
    pointer_bits: int
    is_host: bool
    emulation: str | None
    has_neon: bool

    @property
    def can_time(self) -> bool:
        """Whether timings taken on this machine mean anything for this target (host only)."""
        return self.is_host

    def missing_tools(self, need_qemu: bool = True) -> list[str]:
        """Return the programs and directories this target needs that are not installed.

        Parameters
        ----------
        need_qemu : bool
            Whether the qemu program (to execute, not just build) is needed.

        Returns
        -------
        list of str
            Missing program names / sysroot paths; empty when everything is there.
        """
        missing = []
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            missing.append(self.cross_compiler)
        if need_qemu and self.qemu and shutil.which(self.qemu) is None:
            missing.append(self.qemu)
        if need_qemu and self.sysroot and not Path(self.sysroot, "lib").is_dir():
            missing.append(self.sysroot)
        return missing

    def require_tools(self, need_qemu: bool = True) -> None:
        """Raise :class:`ToolchainMissingError` naming the Debian packages if a tool is missing.

        Parameters
        ----------
        need_qemu : bool
            Whether qemu and the sysroot are needed too (to run), or only the cross-compiler.
        """
        missing = self.missing_tools(need_qemu)
        if missing:
            raise ToolchainMissingError(
                f"target {self.name!r} needs {', '.join(missing)}, which is not installed; "
                f"install the Debian packages: apt-get install {' '.join(self.debian_packages)}"
            )


def _x86_vector_bits(target: tvm.target.Target) -> int:
    # LLVM's own "vector width" answers 512 for AVX2-only CPUs (znver3): ask for the features.
    if codegen.llvm_cpu_has_features("avx512f", target):
        return 512
    if codegen.llvm_cpu_has_features("avx", target):
        return 256
    return 128


#: ``platform.machine()`` (lower case) -> the canonical name of that machine's target.
HOST_MACHINES = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm64", "arm64": "arm64"}


def host_target_name() -> str:
    """The canonical name of this machine's target: ``x86`` on x86-64, ``arm64`` on aarch64.

    Raises
    ------
    UnknownTargetError
        On any other machine (the table has no native entry for it).
    """
    machine = platform.machine()
    if machine.lower() not in HOST_MACHINES:
        raise UnknownTargetError(f"this machine ({machine}) has no target in the table; the hosts it knows are "
                                 f"{', '.join(sorted(HOST_MACHINES))}")
    return HOST_MACHINES[machine.lower()]


def _host_spec(name: str) -> TargetSpec:
    cpu = codegen.llvm_get_system_cpu()
    arm = name == "arm64"
    tvm_json = {"kind": "llvm", "mcpu": cpu, **({"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]} if arm else {})}
    vector_bits = 128 if arm else _x86_vector_bits(tvm.target.Target(tvm_json))
    return TargetSpec(
        name=name,
        description=f"this machine ({platform.machine()}, {cpu}), native",
        tvm_target=tvm_json,
        cross_compiler=None,
        qemu=None,
        sysroot=None,
        debian_packages=(),
        vector_bits=vector_bits,
        vector_registers=32 if arm or vector_bits == 512 else 16,
        pointer_bits=64,
        is_host=True,
        emulation=None,
        has_neon=arm,
    )


#: x86-64 seen from another host (an ARM board): compiled and cross-linked, not run here.
_X86_64 = TargetSpec(
    name="x86",
    description="64-bit x86 (x86-64): PCs and servers",
    tvm_target={"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
    cross_compiler="x86_64-linux-gnu-g++",
    qemu=None,
    sysroot=None,
    debian_packages=("g++-x86-64-linux-gnu", "libc6-amd64-cross"),
    vector_bits=128,
    vector_registers=16,
    pointer_bits=64,
    is_host=False,
    emulation=None,
    has_neon=False,
)


_ARM64 = TargetSpec(
    name="arm64",
    description="64-bit ARM (aarch64) with NEON: phones and boards",
    tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    cross_compiler="aarch64-linux-gnu-g++",
    qemu="qemu-aarch64",
    sysroot="/usr/aarch64-linux-gnu",
    debian_packages=("g++-aarch64-linux-gnu", "libc6-arm64-cross", "qemu-user"),
    vector_bits=128,
    vector_registers=32,
    pointer_bits=64,
    is_host=False,
    emulation=EMULATION_RPC,
    has_neon=True,
)

_ARMV7 = TargetSpec(
    name="armv7",
    description="32-bit ARM (armv7-a, hard-float) with NEON: older phones and boards",
    tvm_target={
        "kind": "llvm",
        "mtriple": "armv7a-linux-gnueabihf",
        "mattr": ["+neon"],
        "mfloat-abi": "hard",
    },
    cross_compiler="arm-linux-gnueabihf-g++",
    qemu="qemu-arm",
    sysroot="/usr/arm-linux-gnueabihf",
    debian_packages=("g++-arm-linux-gnueabihf", "libc6-armhf-cross", "qemu-user"),
    vector_bits=128,
    vector_registers=16,
    pointer_bits=32,
    is_host=False,
    emulation=EMULATION_RUNNER,
    has_neon=True,
)

#: Other names accepted for a target (and ``"host"``, see :func:`host_target_name`).
ALIASES = {"arm": "arm64", "aarch64": "arm64"}


@functools.cache
def _table() -> dict[str, TargetSpec]:
    host = _host_spec(host_target_name())
    return {spec.name: spec for spec in (host, *(s for s in (_X86_64, _ARM64, _ARMV7) if s.name != host.name))}


def target_names() -> list[str]:
    """Return the known target names, canonical names first (the host's first), then aliases."""
    return [*_table(), *ALIASES, "host"]


def get_target(name: str | TargetSpec) -> TargetSpec:
    """Look a target up by name or alias.

    Parameters
    ----------
    name : str or TargetSpec
        ``"x86"``, ``"arm64"`` (alias ``"arm"``), ``"armv7"``, or ``"host"`` (this machine's);
        a spec is returned as is.

    Returns
    -------
    TargetSpec

    Raises
    ------
    UnknownTargetError
        For any other name; the message lists the known ones.
    """
    if isinstance(name, TargetSpec):
        return name
    table = _table()
    canonical = host_target_name() if name == "host" else ALIASES.get(name, name)
    if canonical not in table:
        raise UnknownTargetError(
            f"unknown target {name!r}; known targets: {', '.join(target_names())}"
        )
    return table[canonical]


def tvm_target(name: str | TargetSpec) -> tvm.target.Target:
    """Return the ``tvm.target.Target`` of a target of the table.

    Parameters
    ----------
    name : str or TargetSpec
        A target name or alias (see :func:`get_target`).

    Returns
    -------
    tvm.target.Target
    """
    return tvm.target.Target(get_target(name).tvm_target)


def link_function(target_name: str | TargetSpec) -> Callable[..., None] | None:
    """Return the ``fcompile`` that links shared libraries for a target (None: the host's own).

    For ``export_library(path, fcompile=...)`` or MetaSchedule's builders.

    Parameters
    ----------
    target_name : str or TargetSpec
        The target.

    Returns
    -------
    callable or None

    Raises
    ------
    ToolchainMissingError
        When the cross-compiler is not installed (the message names the Debian packages).
    """
    spec = get_target(target_name)
    spec.require_tools(need_qemu=False)
    return None if spec.cross_compiler is None else cc.cross_compiler(spec.cross_compiler)


def export_library(lib: Any, path: str | os.PathLike, target_name: str | TargetSpec) -> Path:
    """Write a built module as a shared library for a target, cross-linking for ARM.

    Parameters
    ----------
    lib : tvm.runtime.Executable or tvm.runtime.Module or relax VMExecutable
        The result of ``tvm.compile(mod, tvm_target(target_name))``.
    path : str or os.PathLike
        Destination ``.so``; written atomically (:func:`devices.files.atomic_output`).
    target_name : str or TargetSpec
        The target ``lib`` was compiled for.

    Returns
    -------
    pathlib.Path
        The absolute path written.

    Raises
    ------
    ToolchainMissingError
        When the cross-compiler is not installed (the message names the Debian packages).
    DeviceError
        When linking fails.
    """
    spec = get_target(target_name)
    fcompile = link_function(spec)
    options = {} if fcompile is None else {"fcompile": fcompile}
    path = Path(path).absolute()
    try:
        with atomic_output(path, suffix=path.suffix) as tmp:
            lib.export_library(str(tmp), **options)
    except RuntimeError as err:
        raise DeviceError(
            f"linking {path.name} for target {spec.name!r} failed: {_linker_complaint(str(err))} "
            f"(was it compiled with tvm_target({spec.name!r})?)"
        ) from err
    return path


def _linker_complaint(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines[1:] if "error" in line.lower()]
    return (errors or lines or ["no message"])[0][:200]


def with_cross_compiler(name: str | TargetSpec, cross_compiler: str) -> TargetSpec:
    """Return a copy of a target that links with another compiler driver (e.g. a versioned g++).

    Parameters
    ----------
    name : str or TargetSpec
        The target to copy.
    cross_compiler : str
        Program name or path of the compiler driver.

    Returns
    -------
    TargetSpec
    """
    return dataclasses.replace(get_target(name), cross_compiler=cross_compiler)
