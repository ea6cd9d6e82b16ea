"""Compile options, and the one table of per-target densities at which sparse kernels win.

:meth:`CompileConfig.update` is the single place where the target's capabilities switch options off
(mlc-llm style): every pass and the pipeline read the resulting config, none asks the target itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from devices.targets import TargetSpec

#: Highest density at which the scheme's sparse kernel is used instead of the dense conv, per target.
#: Above it the layer stays dense (``KeepDense``) and the report says so. ``python -m
#: benchmarks.crossover`` measures the break-even (one conv, sparse over a grid of densities against
#: the pipeline's scheduled dense conv, each in a process of its own); the x86 values keep a margin
#: below the break-even an earlier, in-process measurement found, and stand until a quiet machine
#: measures it again: re-measured on 2026-12-01 (64->64 at 16x16, batch 4, default knobs, AMD EPYC
#: with 2 cores at a load average of 7-9), the medians of a few milliseconds were too noisy to place
#: one. Channel compaction is a smaller dense conv: it always wins. ARM: no device was measured (the
#: emulator's times are no speed); the x86 values stand in until a device measures them:
#: ``python -m benchmarks.crossover --target arm64 --session tracker:HOST:PORT:KEY`` (or ``rpc:HOST:PORT``).
DENSE_CROSSOVER: dict[str, dict[str, float]] = {
    "x86": {"irregular": 0.40, "block": 0.60, "pattern": 1.0, "channel": 1.0},
    "arm64": {"irregular": 0.40, "block": 0.60, "pattern": 1.0, "channel": 1.0},
    "armv7": {"irregular": 0.40, "block": 0.60, "pattern": 1.0, "channel": 1.0},
}


@dataclass
class CompileConfig:
    """Options of one compilation.

    Attributes
    ----------
    target : str
        Target name of the ``devices`` table (``host``, ``x86``, ``arm64``/``arm``, ``armv7``).
    batch : int
        Static batch size of the compiled module.
    crossover : dict[str, float]
        Per scheme, the highest density that still uses the sparse kernel (from
        :data:`DENSE_CROSSOVER` unless given).
    tune_trials : int
        MetaSchedule trials for the dense operators not yet in the tuning database (0: none).
    time_layers : bool
        Time each layer's kernel for the report (switched off where timings mean nothing).
    """

    target: str = "host"
    batch: int = 1
    crossover: dict[str, float] = field(default_factory=dict)
    tune_trials: int = 0
    time_layers: bool = True

    def update(self, spec: TargetSpec) -> "CompileConfig":
        """Return this config adjusted to what ``spec`` can do.

        Parameters
        ----------
        spec : devices.targets.TargetSpec
            The target compiled for.

        Returns
        -------
        CompileConfig
            Canonical target name, the target's crossover table (entries given by the user win),
            and per-layer timing only where this machine's timings mean something (the host).
        """
        table = {**DENSE_CROSSOVER[spec.name], **self.crossover}
        return replace(self, target=spec.name, crossover=table, time_layers=self.time_layers and spec.can_time)
