"""The target table, cross-linking, the missing-toolchain message, and NEON in ARM code."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import tvm
from device_kernels import build_matmul_case, build_parallel_axpy_case

from devices.errors import DeviceError, ToolchainMissingError, UnknownTargetError
from devices.sessions import default_session_kind
from devices.targets import (
    export_library,
    get_target,
    host_target_name,
    link_function,
    target_names,
    tvm_target,
    with_cross_compiler,
)

#: ELF e_machine values.
EM_X86_64, EM_ARM, EM_AARCH64 = 62, 40, 183
EF_ARM_ABI_FLOAT_HARD = 0x400


def _elf_header(path: Path) -> tuple[int, int, int]:
    """Return (word bits, e_machine, e_flags) of an ELF file."""
    data = path.read_bytes()[:64]
    assert data[:4] == b"\x7fELF"
    bits = 32 if data[4] == 1 else 64
    (machine,) = struct.unpack_from("<H", data, 18)
    (flags,) = struct.unpack_from("<I", data, 36 if bits == 32 else 48)
    return bits, machine, flags


def test_table_knows_the_three_targets_and_the_arm_alias():
    assert sorted(target_names()[:3]) == ["arm64", "armv7", "x86"] and target_names()[0] == host_target_name()
    assert get_target("arm") is get_target("arm64")
    host, arm64, armv7 = get_target("host"), get_target("arm64"), get_target("armv7")
    assert host.is_host and host.can_time and host.cross_compiler is None
    assert arm64.has_neon and arm64.vector_bits == 128 and arm64.is_host == (host is arm64)
    assert arm64.pointer_bits == 64 and armv7.pointer_bits == 32
    assert armv7.has_neon and armv7.tvm_target["mfloat-abi"] == "hard"
    assert host.vector_bits in (128, 256, 512)


def test_tvm_targets_are_built_from_the_json_form():
    assert tvm_target("arm").attrs["mtriple"] == "aarch64-linux-gnu"
    assert tvm_target("armv7").attrs["mtriple"] == "armv7a-linux-gnueabihf"
    assert tvm_target("x86").kind.name == "llvm"


def test_unknown_target_is_a_one_line_error_listing_the_known_names():
    with pytest.raises(UnknownTargetError) as raised:
        get_target("riscv")
    message = str(raised.value)
    assert "\n" not in message
    assert all(name in message for name in ("x86", "arm64", "armv7", "arm"))
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, DeviceError)


@pytest.mark.parametrize("target, machine, bits", [
    ("x86", EM_X86_64, 64), ("arm64", EM_AARCH64, 64), ("armv7", EM_ARM, 32),
])
def test_export_library_links_for_each_target(tmp_path: Path, target: str, machine: int,
                                              bits: int, require_target_tools):
    require_target_tools(target, need_qemu=False)
    lib = tvm.compile(build_matmul_case().module, target=tvm_target(target))
    path = export_library(lib, tmp_path / f"matmul-{target}.so", target)
    word_bits, elf_machine, flags = _elf_header(path)
    assert (word_bits, elf_machine) == (bits, machine)
    if target == "armv7":
        assert flags & EF_ARM_ABI_FLOAT_HARD
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_missing_cross_compiler_names_the_debian_packages(tmp_path: Path):
    spec = with_cross_compiler("arm64", "no-such-aarch64-linux-gnu-g++")
    lib = tvm.compile(build_matmul_case().module, target=tvm_target(spec))
    with pytest.raises(ToolchainMissingError) as raised:
        export_library(lib, tmp_path / "matmul.so", spec)
    message = str(raised.value)
    assert "\n" not in message
    assert "no-such-aarch64-linux-gnu-g++" in message
    assert "apt-get install g++-aarch64-linux-gnu libc6-arm64-cross qemu-user" in message
    assert not (tmp_path / "matmul.so").exists()


@pytest.mark.parametrize("target", ["arm64", "armv7"])
def test_vectorised_arm_code_uses_neon(target: str):
    lib = tvm.compile(build_parallel_axpy_case().module, target=tvm_target(target))
    assembly = lib.mod.inspect_source("asm")
    # armv7 NEON: v<op>.f32 on q registers; aarch64 NEON (AdvSIMD): <op> v<n>.4s.
    neon = r"\bv\w+\.f32\s+q\d+" if target == "armv7" else r"\b\w+\s+v\d+\.4s"
    assert re.search(neon, assembly), f"no NEON instruction in the {target} assembly"


def test_linking_for_the_wrong_target_is_a_one_line_error(tmp_path: Path):
    host = host_target_name()  # its own linker, given 32-bit ARM code
    lib = tvm.compile(build_matmul_case().module, target=tvm_target("armv7"))
    with pytest.raises(DeviceError, match=f"linking matmul.so for target '{host}' failed") as raised:
        export_library(lib, tmp_path / "matmul.so", host)
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("machine, host, other", [("x86_64", "x86", "arm64"), ("aarch64", "arm64", "x86")])
def test_the_host_target_is_named_by_what_the_machine_is(monkeypatch, machine, host, other):
    import devices.targets as targets

    monkeypatch.setattr(targets.platform, "machine", lambda: machine)
    targets._table.cache_clear()
    try:
        assert targets.host_target_name() == host
        assert get_target("host") is get_target(host) and get_target(host).is_host
        assert not get_target(other).is_host and get_target(other).cross_compiler
        # The host builds natively: no cross compiler, no qemu, no sysroot; its session is local.
        spec = get_target(host)
        assert (spec.cross_compiler, spec.qemu, spec.sysroot, spec.emulation) == (None, None, None, None)
        assert spec.missing_tools(need_qemu=True) == [] and link_function(spec) is None
        assert default_session_kind(spec) == "local" and spec.can_time
        assert spec.has_neon == (host == "arm64") and spec.pointer_bits == 64
        if host == "arm64":  # NEON's 32 registers size the register tiles, the triple is aarch64's
            assert spec.vector_registers == 32 and spec.vector_bits == 128
            assert spec.tvm_target["mtriple"] == "aarch64-linux-gnu"
        assert target_names()[0] == host and "host" in target_names()
        assert get_target("x86").pointer_bits == 64 and get_target("arm").name == "arm64"
    finally:
        monkeypatch.undo()
        targets._table.cache_clear()


def test_an_unknown_machine_has_no_host_target(monkeypatch):
    import devices.targets as targets

    monkeypatch.setattr(targets.platform, "machine", lambda: "sparc64")
    with pytest.raises(UnknownTargetError, match=r"this machine \(sparc64\) has no target"):
        targets.host_target_name()
