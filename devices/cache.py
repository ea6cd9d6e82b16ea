"""The cache directory of mest-tvm: one root, one environment variable."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "MEST_TVM_CACHE"


def cache_root() -> Path:
    """The root of the cache: ``$MEST_TVM_CACHE``, else ``$XDG_CACHE_HOME/mest-tvm``, else ``~/.cache/mest-tvm``.

    Everything mest-tvm keeps between runs is below it: the tuning database (``tune-db/``), built
    kernels (``kernels/``), the aarch64 runtime and the cross-built programs. Not created here.
    """
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mest-tvm"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory under the cache of mest-tvm.

    Parameters
    ----------
    *parts : str
        Sub-directories below the cache root.

    Returns
    -------
    pathlib.Path
        ``<cache root>/<parts>`` (see :func:`cache_root`).
    """
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
