"""PhaseLog: the pass instrument that numbers, times, announces and dumps the phases of both pipelines."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tvm


@tvm.ir.instrument.pass_instrument
class PhaseLog:
    """Pass instrument of the pipeline's phases: times each, announces it, dumps its IR after it.

    The phases are the named passes (``tvm.transform.Sequential`` or module passes) of a pipeline
    (:func:`tvm_passes.pipeline.compile_model`, :func:`tvm_passes.training_pipeline.build_training_step`);
    steps that are not passes (the import, the build) go through :meth:`begin` and :meth:`end` directly, so every phase is
    numbered, timed and dumped the same way (``dump_dir/NN_<phase>.py``). TVM's
    ``PassTimingInstrument`` beside it profiles every pass inside the phases.

    Parameters
    ----------
    phases : sequence of str
        The names of the passes that are phases, in order.
    dump_dir : Path, optional
        Where the IR after each phase goes.
    progress : callable, optional
        Receives ``"phase N: <name>"`` as a phase starts.
    """

    def __init__(self, phases: Sequence[str], dump_dir: Path | None, progress: Callable[[str], None] | None):
        self.phases = list(phases)
        self.dump_dir = dump_dir
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)

    def begin(self, name: str) -> None:
        """A phase starts."""
        if self.progress:
            self.progress(f"phase {self.phases.index(name) + 1}: {name}")
        self._started[name] = time.perf_counter()

    def end(self, name: str, mod: Any) -> None:
        """A phase ended with ``mod`` (dumped when it is an IRModule)."""
        self.seconds[name] = time.perf_counter() - self._started.pop(name)
        if self.dump_dir is not None and isinstance(mod, tvm.IRModule):
            number = self.phases.index(name) + 1
            (self.dump_dir / f"{number:02d}_{name.replace(' ', '_')}.py").write_text(mod.script(show_meta=False))

    def run_before_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        if info.name in self.phases:
            self.begin(info.name)

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        if info.name in self.phases:
            self.end(info.name, mod)
