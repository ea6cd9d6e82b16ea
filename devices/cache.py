"""The cache directory of mest-tvm: one root, one environment variable."""

from __future__ import annotations

import os
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
