"""The aarch64 runtime and the native programs: built once, cached, clear errors when they cannot be."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devices.arm64_runtime import RuntimeDownloadError, aarch64_runtime, emulator_server_program
from devices.cache import CACHE_ENV_VAR, cache_dir
from devices.kernel_runner import kernel_runner_program
from devices.targets import get_target


def test_cache_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert cache_dir("a", "b") == tmp_path / "cache" / "a" / "b"
    assert (tmp_path / "cache" / "a" / "b").is_dir()


def test_unreachable_package_index_is_a_clear_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    # A package index on a closed loopback port, and no configured mirrors or wheel directories.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(RuntimeDownloadError) as raised:
        aarch64_runtime()
    message = str(raised.value)
    assert "\n" not in message
    assert "apache-tvm==" in message and "from the package index" in message
    assert not list(tmp_path.rglob("*.so"))


def test_programs_are_cached_by_source(require_target_tools):
    require_target_tools("arm64", need_qemu=False)
    require_target_tools("armv7", need_qemu=False)
    server = emulator_server_program()
    runner = kernel_runner_program(get_target("armv7"))
    assert server.parent == aarch64_runtime()
    assert {path.name for path in server.parent.glob("*.so")} == {"libtvm_runtime.so",
                                                                 "libtvm_ffi.so"}
    assert emulator_server_program() == server and os.access(server, os.X_OK)
    assert kernel_runner_program(get_target("armv7")) == runner and os.access(runner, os.X_OK)
