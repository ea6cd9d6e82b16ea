"""Atomic file writes, their clean-up after a kill, and a lock file: the one implementation of each.

Every file this project writes (checkpoints, metrics, tuning records, exported kernels, compiled
models, cross-built programs) goes through :func:`atomic_output` or one of its shorthands: the bytes go
to a temporary sibling, are flushed to disk (``fsync`` of the file), renamed over the destination
(``os.replace``), and the rename itself is made durable (``fsync`` of the directory). A reader sees the
old file or the new one, never a torn one. On an error the temporary is removed; after a kill it stays,
named ``.<name>.<pid>.<token>.tmp[<suffix>]`` so that :func:`remove_stale_temporaries` can recognise it
and remove it once that process is gone. Files are created with the user's umask (mode ``0o666`` before
the umask, as ``open()`` does), not ``mkstemp``'s 0600. A file a reader cannot trust is not deleted but
set aside (:func:`set_aside`): renamed, its bytes untouched, for the user to inspect.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

#: ``.<name>.<pid>.<token>.tmp`` followed by an optional suffix the writing tool needs (``.so``).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp(?P<suffix>\.[A-Za-z0-9]+)?$")


def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` that :func:`remove_stale_temporaries` recognises.

    Parameters
    ----------
    path : pathlib.Path
        The destination the temporary will be renamed to.
    suffix : str
        Appended after ``.tmp``, for tools that choose a format by the file name (``".so"``).
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write (or to have a tool write); on success it becomes ``path``.

    The parent directory is created if missing. When the block raises, the temporary is removed and
    ``path`` is untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.
    suffix : str
        See :func:`temporary_sibling`.

    Yields
    ------
    pathlib.Path
        Where to write; it need not exist yet.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], object], mode: int = 0o666) -> Path:
    """Write ``path`` through ``writer(handle)`` (a binary handle), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The destination; its directory is created if missing.
    writer : callable
        Receives the open binary handle of the temporary file.
    mode : int
        Permissions before the umask (``0o666``; ``0o777`` for an executable).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o666) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data), mode)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o666) -> Path:
    """Atomically write ``text``, UTF-8 encoded, to ``path`` (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(), mode)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    except OverflowError:  # not a pid of this machine
        return False
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`atomic_output` in ``directory`` whose writer is dead.

    A temporary of a live process (this one included) is kept: it may be in the middle of a write.

    Parameters
    ----------
    directory : str or os.PathLike
        The directory to clean (not recursive); a missing one is fine.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in Path(directory).iterdir():
            match = _TEMPORARY.match(entry.name)
            if match is None or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def set_aside(path: str | os.PathLike, why: str) -> Path | None:
    """Rename ``path`` (a file or a directory) to ``<name>.<why>-<time>-<pid>``, contents untouched.

    Parameters
    ----------
    path : str or os.PathLike
        What to set aside.
    why : str
        One word for the name: ``corrupt``, ``foreign``, ``rejected``...

    Returns
    -------
    pathlib.Path or None
        The new name; None when ``path`` was gone already (another process set it aside first).
    """
    path = Path(path)
    stamp = f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    aside, n = path.with_name(stamp), 1
    while aside.exists():  # set aside twice in one second by this process
        n += 1
        aside = path.with_name(f"{stamp}-{n}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return aside


@contextlib.contextmanager
def file_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (processes sharing a directory take turns).

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
