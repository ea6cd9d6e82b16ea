"""What every bad-input test of the ``mest`` commands checks: one ``error:`` line, no traceback, and
every file that existed before still there, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def snapshot(*roots: Path) -> dict[Path, bytes | None]:
    """Every file and directory under ``roots`` (themselves included) -> its bytes (None for a directory)."""
    found: dict[Path, bytes | None] = {}
    for root in roots:
        if root.is_file():
            found[root] = root.read_bytes()
        elif root.is_dir():
            found[root] = None
            for path in sorted(root.rglob("*")):
                found[path] = path.read_bytes() if path.is_file() else None
    return found


def assert_one_error_line(stderr: str, message: str) -> str:
    """``stderr`` is exactly one ``error: ...`` line containing ``message``; return that line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], f"{message!r} not in {lines[0]!r}"
    return lines[0]


def run_python(*args: str, env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python args...`` from the repository root, in the environment of the tests."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
