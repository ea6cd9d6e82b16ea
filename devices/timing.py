"""Timing: median and spread of N runs (marked when emulated), and :func:`time_calls`, which times a
callable in this process.

:func:`time_calls` is the one "warm up, then time N runs" of the project: the benchmark workers
(``benchmarks.harness``) and the tuner's PyTorch baseline (``schedules.tune``) use it. Sessions time a
built TVM function with TVM's ``time_evaluator`` on the device instead, and summarise it here too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated runs of one function.

    Attributes
    ----------
    median_s : float
        Median over the runs of the mean seconds per call.
    spread_s : float
        Largest minus smallest run (seconds per call).
    runs : tuple of float
        Mean seconds per call of each run (one run = ``number`` calls).
    emulated : bool
        True when measured under qemu: a correctness run, never a speed of the target.
    """

    median_s: float
    spread_s: float
    runs: tuple[float, ...]
    emulated: bool

    @classmethod
    def from_runs(cls, runs: Sequence[float], emulated: bool) -> Timing:
        """Summarise per-run mean seconds.

        Parameters
        ----------
        runs : sequence of float
            Mean seconds per call of each run; at least one.
        emulated : bool
            Whether they were measured under emulation.

        Returns
        -------
        Timing
        """
        values = tuple(float(value) for value in runs)
        if not values:
            raise ValueError("a timing needs at least one run")
        return cls(statistics.median(values), max(values) - min(values), values, emulated)

    def describe(self) -> str:
        """Return one line for reports; emulated timings say they are no speed."""
        text = (f"median {_format_seconds(self.median_s)}, spread "
                f"{_format_seconds(self.spread_s)} over {len(self.runs)} runs")
        return f"correctness run under emulation ({text}; not a speed)" if self.emulated else text


def time_calls(function: Callable[[], object], runs: int, number: int = 1, warmup: int = 1) -> Timing:
    """Time ``function`` in this process by the wall clock: ``warmup`` untimed calls, then ``runs`` runs.

    Parameters
    ----------
    function : callable
        Called without arguments.
    runs : int
        Timed runs (at least one); each is ``number`` calls, and gives their mean.
    number : int
        Calls per run.
    warmup : int
        Untimed calls first (builds, caches, allocator warm-up).

    Returns
    -------
    Timing
        Per-call seconds of each run; never emulated.
    """
    for _ in range(warmup):
        function()
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(number):
            function()
        values.append((time.perf_counter() - start) / number)
    return Timing.from_runs(values, emulated=False)


def _format_seconds(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"
