"""Atomic writes: all or nothing, the user's umask, and no temporary left once its writer is gone."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devices.files import (atomic_output, atomic_write, atomic_write_bytes, atomic_write_text,
                           remove_stale_temporaries)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


def test_a_rewrite_replaces_and_leaves_nothing_beside(tmp_path: Path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_text(target, "second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("mask, plain, executable", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_get_the_users_umask(tmp_path: Path, umask, mask, plain, executable):
    umask(mask)
    atomic_write_text(tmp_path / "plain.txt", "x")
    atomic_write_bytes(tmp_path / "program", b"x", mode=0o777)
    assert _mode(tmp_path / "plain.txt") == plain
    assert _mode(tmp_path / "program") == executable


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def half_then_fail(handle):
        handle.write(b"new but torn")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_tool_writes_through_atomic_output_with_its_suffix(tmp_path: Path):
    target = tmp_path / "lib.so"
    with atomic_output(target, suffix=".so") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.so") and not tmp.exists()
        tmp.write_bytes(b"ELF")
    assert target.read_bytes() == b"ELF" and not tmp.exists()


def test_a_killed_writer_leaves_a_temporary_that_cleanup_removes(tmp_path: Path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from devices.files import atomic_write

        def half_then_killed(handle):
            handle.write(b"half a checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write({str(target)!r}, half_then_killed)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    left = [p for p in tmp_path.iterdir() if p != target]
    assert len(left) == 1 and left[0].name.startswith(".checkpoint.pt.") and left[0].read_bytes() == b"half a checkpoint"

    (tmp_path / "unrelated.tmp").write_bytes(b"not ours")
    with atomic_output(tmp_path / "in-flight") as live:  # this process is alive: its temporary stays
        live.write_bytes(b"being written")
        assert remove_stale_temporaries(tmp_path) == left
        assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "in-flight", "unrelated.tmp"]
    assert target.read_bytes() == b"the last good checkpoint"
    assert remove_stale_temporaries(tmp_path / "missing") == []
