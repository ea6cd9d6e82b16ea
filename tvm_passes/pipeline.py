"""The compile pipeline: a trained, masked PyTorch model becomes a built TVM module for a target.

Phases 2-6 are one ``tvm.transform.Sequential`` of named phases (each a ``Sequential`` of passes), run
under a ``PassContext`` with two instruments: :class:`~tvm_passes.phases.PhaseLog` (times and
announces each phase, and dumps its IR to ``dump_dir/NN_<phase>.py``) and TVM's ``PassTimingInstrument`` (every pass's time,
:attr:`CompiledModel.pass_profile`). Phases:

1. **import**: ``torch.export`` + ``from_exported_program``, parameters kept as inputs
   (:mod:`tvm_passes.importer`);
2. **annotate**: masked convs marked by FQN (:class:`~tvm_passes.annotate.AnnotateSparsity`), then the
   parameters are bound as constants (masks of other parameters, e.g. channel-coupled BN, applied);
3. **fold**: inference batch norms folded into the convs (:class:`~tvm_passes.fold_batch_norm.FoldBatchNorm`);
4. **lower**: :class:`~tvm_passes.keep_dense.KeepDense` (per-target crossover table; it records every
   layer's decision in the module attribute ``mest.layers``, which the report reads),
   :class:`~tvm_passes.channel_compaction.ChannelCompaction`, then
   :class:`~tvm_passes.lower_sparse_conv.LowerSparseConv` (scheme kernels of ``schedules``);
5. **legalize + fuse** the remaining Relax operators (``LegalizeOps``, ``FoldConstant``, ``FuseOps``,
   ``FuseTIR``);
6. **tuning database**: tune the dense operators missing from it if trials are asked for, apply it
   (:class:`~tvm_passes.tuning.ApplyTuningDatabase`), and give the dense convs it lacks the default schedule
   (:class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`);
7. **build** for the target of the ``devices`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from devices.targets import get_target, tvm_target
from schedules.database import TuningDatabase

from .annotate import AnnotateSparsity, LayerMask
from .channel_compaction import ChannelCompaction
from .config import CompileConfig
from .errors import MaskError
from .fold_batch_norm import FoldBatchNorm
from .importer import import_model
from .keep_dense import KeepDense
from .lower_sparse_conv import KernelSource, LowerSparseConv
from .phases import PhaseLog
from .report import LayerReport, layer_reports
from .schedule_dense_conv import ScheduleDenseConv
from .tuning import ApplyTuningDatabase


#: The phases of :func:`compile_model`, in order (the names of its report's ``phase_seconds``).
PHASES = ("import", "annotate", "fold", "lower", "legalize and fuse", "tuning database", "build")


@dataclass
class CompiledModel:
    """The result of :func:`compile_model`.

    Attributes
    ----------
    executable : tvm.runtime.Executable
        The built Relax VM executable (``main(x) -> logits``), weights embedded as constants.
    mod : tvm.IRModule
        The module that was built (after phase 6).
    layers : list[LayerReport]
        One entry per masked layer (timings filled in by :func:`tvm_passes.report.time_layers`).
    config : CompileConfig
        The config after :meth:`CompileConfig.update`.
    input_shape : tuple[int, ...]
        Shape of ``x``.
    phase_seconds : dict[str, float]
        Wall time of each phase.
    stored_arrays : dict[str, numpy.ndarray]
        The sparse layers' format buffers by ``<fqn>/<buffer>``, as embedded in the library.
    pass_profile : str
        Time of every pass inside the phases (TVM's ``PassTimingInstrument``).
    """

    executable: tvm.runtime.Executable
    mod: tvm.IRModule
    layers: list[LayerReport]
    config: CompileConfig
    input_shape: tuple[int, ...]
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stored_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    pass_profile: str = ""


def _layer_masks(masks: Mapping[str, torch.Tensor], schemes: Mapping[str, str]) -> dict[str, LayerMask]:
    missing = sorted(set(schemes) - set(masks))
    if missing:
        raise MaskError(f"scheme given without a mask for {missing[0]}")
    return {fqn: LayerMask(scheme, masks[fqn].detach().cpu().numpy().astype(bool)) for fqn, scheme in schemes.items()}


def _bound_params(imported, masks: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Parameter values with every mask applied (conv weights and e.g. channel-coupled BN parameters).

    A weight outside its mask does not exist; the trainer keeps it zero, and this makes it so for any
    masked parameter, including one no pass lowers (a masked classifier).
    """
    values = dict(imported.params)
    unknown = sorted(set(masks) - set(imported.param_fqns.values()))
    if unknown:
        raise MaskError(f"mask for {unknown[0]!r} names no parameter of the model")
    for name, fqn in imported.param_fqns.items():
        if fqn in masks:
            mask = masks[fqn].detach().cpu().numpy()
            if mask.shape != values[name].shape:
                raise MaskError(f"mask for {fqn} has shape {list(mask.shape)}, parameter has {list(values[name].shape)}")
            values[name] = (values[name] * mask).astype(values[name].dtype)
    return values


def compile_model(
    model: torch.nn.Module,
    masks: Mapping[str, torch.Tensor],
    schemes: Mapping[str, str],
    input_shape: tuple[int, ...],
    config: CompileConfig,
    kernels: KernelSource,
    database: TuningDatabase | None = None,
    tuning_runner: Any = None,
    dump_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompiledModel:
    """Compile a masked model for ``config.target``.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (weights already masked by the trainer).
    masks : Mapping[str, torch.Tensor]
        Bool mask per parameter FQN.
    schemes : Mapping[str, str]
        Scheme per sparse conv weight FQN.
    input_shape : tuple[int, ...]
        Static NCHW input shape (batch included).
    config : CompileConfig
        Options; adjusted to the target with :meth:`CompileConfig.update`.
    kernels : KernelSource
        Source of the sparse kernels (:class:`tvm_passes.kernels.SchedulesKernels`).
    database : schedules.database.TuningDatabase, optional
        Tuning database whose dense records are applied (none: untuned dense operators).
    tuning_runner : meta_schedule Runner or "local", optional
        Where MetaSchedule measures the dense candidates when ``config.tune_trials`` > 0 (none: no
        dense tuning, the database is only applied).
    dump_dir : str or Path, optional
        Directory receiving the IR after each phase (see :class:`~tvm_passes.phases.PhaseLog`).
    progress : callable, optional
        Called with a one-line message at the start of each phase.

    Returns
    -------
    CompiledModel
    """
    spec = get_target(config.target)
    config = config.update(spec)
    target = tvm_target(spec)
    layers = _layer_masks(masks, schemes)
    trials = config.tune_trials if tuning_runner is not None else 0
    log = PhaseLog(PHASES, Path(dump_dir) if dump_dir is not None else None, progress)
    timing = tvm.ir.instrument.PassTimingInstrument()

    # Phase 1: import, parameters as inputs so that their names still lead to FQNs.
    log.begin("import")
    imported = import_model(model, input_shape)
    log.end("import", imported.mod)
    phases = tvm.transform.Sequential([
        # Phase 2: annotate masked convs by FQN, then bind the (masked) parameters as constants.
        tvm.transform.Sequential([AnnotateSparsity(layers, imported.param_fqns),
                                  relax.transform.BindParams("main", _bound_params(imported, masks))], name="annotate"),
        # Phase 3: fold inference batch norms into the (plain or annotated) convs.
        tvm.transform.Sequential([FoldBatchNorm()], name="fold"),
        # Phase 4: keep dense what sparse would not speed up (recording every layer's decision for the
        # report), compact channel layers, lower the rest to the kernels of schedules.
        tvm.transform.Sequential([KeepDense(config.crossover), ChannelCompaction(), LowerSparseConv(kernels)],
                                 name="lower"),
        # Phase 5: legalize and fuse the remaining operators (sparse kernels are opaque and stay alone).
        tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                  relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()],
                                 name="legalize and fuse"),
        # Phase 6: tuning database for the dense operators (tune what it lacks if asked, then apply);
        # the dense convs it has no record for get the default schedule.
        tvm.transform.Sequential(
            [ApplyTuningDatabase(database, target, config.target, trials, progress, tuning_runner or "local")
             if database is not None else tvm.transform.Sequential([]), ScheduleDenseConv(spec)], name="tuning database"),
    ], name="mest.compile")
    with tvm.transform.PassContext(opt_level=2, instruments=[timing, log]):
        mod = phases(imported.mod)
        profile = timing.render()
    reports, stored = layer_reports(mod, layers)

    # Phase 7: build for the target.
    log.begin("build")
    executable = tvm.compile(mod, target)
    log.end("build", None)
    return CompiledModel(
        executable=executable,
        mod=mod,
        layers=reports,
        config=config,
        input_shape=tuple(input_shape),
        phase_seconds=log.seconds,
        stored_arrays=stored,
        pass_profile=profile,
    )


def load_on(session, compiled: CompiledModel, name: str = "model") -> relax.VirtualMachine:
    """The compiled model as a Relax VM on a ``devices`` session (exported, cross-linked as needed).

    Parameters
    ----------
    session : devices.sessions.Session
        A session of the target the model was compiled for.
    compiled : CompiledModel
    name : str
        Base name of the exported library the session loads.

    Returns
    -------
    tvm.relax.VirtualMachine
        ``vm["main"](session.array(x))`` gives the logits.
    """
    return relax.VirtualMachine(session.load(compiled.executable, name).module, session.device)


def time_model(session, vm: relax.VirtualMachine, x: np.ndarray, number: int = 5, repeat: int = 5):
    """Median time of the whole model on ``session`` (a ``devices.timing.Timing``)."""
    from devices.timing import Timing

    with session.guard("timing of the model"):
        result = vm.time_evaluator("main", session.device, number=number, repeat=repeat)(session.array(x))
    return Timing.from_runs(result.results, session.emulated)
