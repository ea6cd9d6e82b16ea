"""Numbered, timed compiler phases with an optional IR dump after each (shared by both pipelines)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tvm


class Phases:
    """Runs numbered phases, timing them and dumping the IR after each.

    Parameters
    ----------
    dump_dir : Path, optional
        Directory receiving ``NN_<phase>.py`` (the module's TVMScript) after each phase.
    progress : callable, optional
        Called with ``phase N: <name>`` at the start of each phase.
    """

    def __init__(self, dump_dir: Path | None, progress: Callable[[str], None] | None):
        self.dump_dir = dump_dir
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.count = 0
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        """Run ``step()`` as the next phase, timed (and its IR dumped); return its result."""
        self.count += 1
        if self.progress:
            self.progress(f"phase {self.count}: {name}")
        start = time.perf_counter()
        result = step()
        self.seconds[name] = time.perf_counter() - start
        mod = getattr(result, "mod", result)
        if self.dump_dir is not None and isinstance(mod, tvm.IRModule):
            (self.dump_dir / f"{self.count:02d}_{name.replace(' ', '_')}.py").write_text(mod.script(show_meta=False))
        return result
