"""The cache directory of ``devices`` and atomic writes into it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_ENV_VAR = "MEST_TVM_CACHE"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory under the cache of mest-tvm.

    Parameters
    ----------
    *parts : str
        Sub-directories below the cache root.

    Returns
    -------
    pathlib.Path
        ``$MEST_TVM_CACHE/<parts>`` if the variable is set, else ``~/.cache/mest-tvm/<parts>``.
    """
    root = os.environ.get(CACHE_ENV_VAR) or os.path.join(Path.home(), ".cache", "mest-tvm")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Parameters
    ----------
    path : pathlib.Path
        Destination file; its directory must exist.
    data : bytes
        The whole content.
    mode : int
        File permissions of the result.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(source: Path, path: Path, mode: int = 0o644) -> None:
    """Copy the file ``source`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, Path(source).read_bytes(), mode)
