"""The run directory: one mest.train at a time (an OS lock, released by a crash), created up front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import ROOT, assert_one_error_line, run_python, snapshot

from mest.errors import RunDirError
from mest.rundir import LOCK_NAME, holder_pid, locked_run_dir, make_dir, output_dir


def test_the_lock_names_its_holder_and_is_removed_on_leaving(tmp_path):
    run = tmp_path / "run"
    with locked_run_dir(run):
        assert holder_pid(run) == os.getpid()
        # flock is per open file: a second acquisition, even from this process, is refused
        with pytest.raises(RunDirError, match=f"in use by another mest.train \\(pid {os.getpid()}\\)"):
            with locked_run_dir(run):
                pass
        (run / "checkpoint.pt").write_bytes(b"kept")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]
    with locked_run_dir(run, create=False):  # free again
        pass


def test_a_refused_run_leaves_no_directory_behind(tmp_path):
    with pytest.raises(ValueError):
        with locked_run_dir(tmp_path / "a" / "b"):
            raise ValueError("refused at start-up")
    assert not (tmp_path / "a" / "b").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with locked_run_dir(existing):
        pass
    assert existing.is_dir()  # the user's own (empty) directory stays


def test_a_stale_lock_file_locks_nothing(tmp_path):
    (tmp_path / LOCK_NAME).write_text("999999999\n")
    with locked_run_dir(tmp_path, create=False):
        assert holder_pid(tmp_path) == os.getpid()


def test_directories_that_cannot_be_made_are_named(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        make_dir(a_file)
    with pytest.raises(RunDirError, match="cannot create --dump-ir directory .*Not a directory"):
        with output_dir(a_file / "sub", "--dump-ir"):
            pass
    if Path("/sys/kernel").is_dir():  # sysfs refuses new directories, to root as well
        with pytest.raises(RunDirError, match="cannot create --out directory /sys/mest-tvm-test"):
            make_dir(Path("/sys/mest-tvm-test"))
    assert a_file.read_text() == "x"


def test_a_second_mest_train_on_a_running_run_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "mest.train", "--model", "tiny", "--backend", "torch-mask", "--no-progress",
         "--epochs", "30", "--batch-size", "8", "--out", str(run)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            if holder_pid(run) == first.pid and (run / "checkpoint.pt").exists():
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the test could start a second"
        first.send_signal(signal.SIGSTOP)  # it keeps its lock; its files stay still while we compare
        before = snapshot(tmp_path)
        for argv in (["--model", "tiny", "--backend", "torch-mask", "--out", str(run)], ["--resume", str(run)]):
            second = run_python("-m", "mest.train", "--no-progress", *argv)
            assert second.returncode == 2, second.stderr
            assert_one_error_line(second.stderr, f"is in use by another mest.train (pid {first.pid})")
            assert snapshot(tmp_path) == before
    finally:
        first.kill()
        first.wait(timeout=30)
    # killed, it left its lock file; the OS released the lock, so the run can be resumed
    assert (run / LOCK_NAME).exists()
    with locked_run_dir(run, create=False):
        assert holder_pid(run) == os.getpid()
