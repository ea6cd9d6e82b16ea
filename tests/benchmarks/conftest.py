"""Fixtures of the benchmarks tests: a command run as a user runs it, in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def run_benchmark(tmp_path: Path) -> Callable[..., tuple[subprocess.CompletedProcess, dict | None]]:
    """``run_benchmark("train_step", *args)`` -> (completed process, JSON report or None).

    The command runs as ``python -m benchmarks.<name> ... --out <tmp>/report.json`` with this
    process's environment, as a user who chose ``OMP_WAIT_POLICY=PASSIVE`` and no ``TVM_NUM_THREADS``
    (test machines are loaded, and OpenMP threads that spin there make a tiny PyTorch step take
    seconds); its kernel cache and tuning databases are the test's own.
    """

    def run(name: str, *args: str):
        environment = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
        environment = {**environment, "OMP_WAIT_POLICY": "PASSIVE", "XDG_CACHE_HOME": str(tmp_path / "cache"),
                       "MEST_TVM_TUNING_DB": str(tmp_path / "tuning.json")}
        out = tmp_path / "report.json"
        completed = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out)],
                                   env=environment, capture_output=True, text=True, timeout=600, check=False)
        return completed, (json.loads(out.read_text()) if out.exists() else None)

    return run
