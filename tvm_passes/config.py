"""Compile options, and the one table of per-target densities at which sparse kernels win.

:meth:`CompileConfig.update` is the single place where the target's capabilities switch options off
(mlc-llm style): every pass and the pipeline read the resulting config, none asks the target itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from devices.targets import TargetSpec

#: Highest density at which the scheme's sparse kernel is used instead of the dense conv, per target.
#: Above it the layer stays dense (``KeepDense``) and the report says so. x86: from the kernel probe of
#: ``../shared/notes/tvm.md`` (CSR 4.9x and 4x1 blocks 9.5x faster than oneDNN at 10%, time linear in
#: the non-zeros, so the break-even sits near 40-50%; set a margin below). Pattern kernels compute 4 of 9
#: taps even with every kernel kept (density 4/9), so pattern is never dense. Channel compaction is a
#: smaller dense conv: it always wins. ARM: no device measured yet; the same table as x86, to be replaced
#: by measurements through a tracker session.
DENSE_CROSSOVER: dict[str, dict[str, float]] = {
    "x86": {"irregular": 0.30, "block": 0.40, "pattern": 1.0, "channel": 1.0},
    "arm64": {"irregular": 0.30, "block": 0.40, "pattern": 1.0, "channel": 1.0},
    "armv7": {"irregular": 0.30, "block": 0.40, "pattern": 1.0, "channel": 1.0},
}


@dataclass
class CompileConfig:
    """Options of one compilation.

    Attributes
    ----------
    target : str
        Target name of the ``devices`` table (``x86``, ``arm64``/``arm``, ``armv7``).
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

    target: str = "x86"
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
