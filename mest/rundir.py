"""The run directory of ``mest.train``: created up front, and locked for the life of a run.

The lock is an OS file lock (``fcntl.flock``) on ``run.lock`` in the run directory, so the kernel
releases it when the holder exits, however it exits (``kill -9`` included): a stale ``run.lock``
left by a crash locks nothing. The file holds the holder's pid, which a refused second run names.
Taking the lock is also the up-front check that the directory can be written: it is the first
thing a run writes, before any data is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mest.errors import RunDirError

LOCK_NAME = "run.lock"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def make_dir(path: Path, flag: str = "--out") -> bool:
    """Create the directory ``path`` (and its parents) if missing; return whether it was created.

    Raises
    ------
    RunDirError
        ``path`` is a file, or the directory cannot be created (read-only, no permission, ...).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{flag} {path} is a file, not a directory")
    if path.is_dir():
        return False
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return make_dir(path, flag)  # another process made it meanwhile
    except OSError as err:
        raise RunDirError(f"cannot create {flag} directory {path}: {_reason(err)}") from None
    return True


def holder_pid(run_dir: Path) -> int | None:
    """The pid written in the lock file of ``run_dir``, or None when there is none to read."""
    try:
        return int((Path(run_dir) / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _acquire(lock_path: Path) -> int:
    """Open and flock ``lock_path``; return the descriptor (the file may be replaced meanwhile: retry)."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise RunDirError(f"cannot write in run directory {lock_path.parent}: {_reason(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder_pid(lock_path.parent)
            holder = f"pid {pid}" if pid is not None else "a process that is starting"
            raise RunDirError(f"run directory {lock_path.parent} is in use by another mest.train ({holder}); "
                              "wait for it to end, or train into another --out") from None
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # else its holder removed it as we opened it: lock the new one
            return fd
        os.close(fd)


@contextmanager
def output_dir(path: Path, flag: str = "--out") -> Iterator[Path]:
    """Create the directory ``path`` up front (see :func:`make_dir`) for the ``with`` block; remove it
    again on leaving if this call created it and nothing was written into it."""
    path = Path(path)
    created = make_dir(path, flag)
    try:
        yield path
    finally:
        if created:
            _remove_if_empty(path)


@contextmanager
def locked_run_dir(run_dir: Path, create: bool = True) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the ``with`` block.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    create : bool
        Create the directory if missing (a new run; removed again if the run writes nothing); a
        resumed run's directory must exist.

    Raises
    ------
    RunDirError
        Another process holds the lock (the message names its pid), or the directory cannot be
        created or written.

    Notes
    -----
    On leaving, the lock file is removed before the lock is released.
    """
    with output_dir(run_dir) if create else contextlib.nullcontext(Path(run_dir)) as run_dir:
        lock_path = run_dir / LOCK_NAME
        fd = _acquire(lock_path)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield run_dir
        finally:
            lock_path.unlink(missing_ok=True)
            os.close(fd)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: something was written, keep it
