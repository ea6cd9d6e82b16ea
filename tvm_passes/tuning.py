"""ApplyTuningDatabase: MetaSchedule tunes (if asked) and applies the dense operators' tuning records.

Where it runs: phase 6 of the pipeline, after ``LegalizeOps``/``FuseOps``/``FuseTIR`` and before
``ScheduleDenseConv`` (which schedules what the database has no record for).

The tuning database itself (one directory, its layout, what is set aside) is
:class:`schedules.database.TuningDatabase`; this module adds what needs Relax: extract the dense tasks of
a legalized, fused module (first conv, shortcuts, classifier, kept-dense and channel-compacted convs,
element-wise groups; the sparse kernels are ours and tuned by ``schedules.tune``), tune those the
database lacks with MetaSchedule, and apply the records with ``MetaScheduleApplyDatabase``. A record
always wins over :class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`'s default schedule, so tune
with enough trials (a few dozen MetaSchedule trials over the ~20 dense tasks of ResNet-32 gave slower
schedules than the default one): before keeping the records, compare ``python -m benchmarks.inference``
on the tuned database with a run on an empty one (``--tune-db``). Tuning measures on this machine
(MetaSchedule's local builder and runner) or, for another target, on a device of a tracker
(``RPCRunner``); timing an emulated target would tune for qemu, so it is refused. Records MetaSchedule
rejects while applying them are set aside (:meth:`~schedules.database.TuningDatabase.reject_dense`) and
compilation goes on without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from schedules.database import METASCHEDULE_ERRORS, TuningDatabase, last_line

from .errors import CompileError


def _untuned_tasks(mod: tvm.IRModule, target: tvm.target.Target, records) -> list:
    tasks = []
    for task in ms.relax_integration.extract_tasks(mod, target):
        prim = task.mod["main"]
        if prim.attrs is not None and ("mest.fqn" in prim.attrs or "tir.is_scheduled" in prim.attrs):
            continue  # a sparse kernel: scheduled by schedules, tuned by its tuner
        if not records.has_workload(task.mod):
            tasks.append(task)
    return tasks


def _tune(mod: tvm.IRModule, target: tvm.target.Target, database: TuningDatabase, records, trials: int,
          progress: Callable[[str], None] | None, runner: ms.runner.Runner | str) -> None:
    if "num-cores" not in target.export():
        # MetaSchedule's mutators and rules need the core count in the target.
        target = tvm.target.Target({**target.export(), "num-cores": os.cpu_count() or 1})
    tasks = _untuned_tasks(mod, target, records)
    if not tasks:
        return
    logs = database.path / "logs"
    if progress:
        progress(f"tuning {len(tasks)} dense operators, {trials} trials (MetaSchedule, XGBoost cost model; "
                 f"per-task progress in {logs / 'logs'})")
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(logs), space="post-order-apply"
    )
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(logs),
            max_trials_global=trials,
            # every task gets its share in the first round (MetaSchedule gives each task
            # num_trials_per_iter trials in turn until the global budget is spent)
            num_trials_per_iter=max(1, min(64, trials // len(tasks))),
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300.0),
            runner=runner,
            database=records,
            cost_model="xgb",
        )
    except METASCHEDULE_ERRORS as exc:
        raise CompileError(f"MetaSchedule tuning failed: {last_line(exc)}") from exc


def _apply(mod: tvm.IRModule, target: tvm.target.Target, records) -> tvm.IRModule:
    with target, records, tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


def tune_and_apply(
    database: TuningDatabase,
    mod: tvm.IRModule,
    target: tvm.target.Target,
    target_name: str,
    trials: int,
    progress: Callable[[str], None] | None = None,
    runner: ms.runner.Runner | str = "local",
) -> tvm.IRModule:
    """Tune the dense operators the database lacks (if ``trials``), then apply its dense records.

    Parameters
    ----------
    database : schedules.database.TuningDatabase
        The tuning database (its ``dense-<target_name>`` records are used).
    mod : tvm.IRModule
        The legalized and fused module.
    target : tvm.target.Target
        Target of the build.
    target_name : str
        Its name in the ``devices`` table.
    trials : int
        MetaSchedule trials over all new tasks; 0 applies the database only.
    progress : callable, optional
        Receives one line per tuning step.
    runner : meta_schedule Runner or "local"
        Where candidates are measured (an ``RPCRunner`` for a tracker's device).

    Returns
    -------
    tvm.IRModule
        The module with the database's schedules applied where it has them.

    Raises
    ------
    CompileError
        When MetaSchedule's tuning itself fails.
    """
    records = database.dense(target_name)
    if trials > 0:
        _tune(mod, target, database, records, trials, progress, runner)
    try:
        return _apply(mod, target, records)
    except METASCHEDULE_ERRORS as exc:
        records = database.reject_dense(target_name, f"MetaSchedule cannot apply its records ({last_line(exc)})")
        return _apply(mod, target, records)


@tvm.transform.module_pass(opt_level=0, name="mest.ApplyTuningDatabase")
class ApplyTuningDatabase:
    """The pass of :func:`tune_and_apply` (see the module docstring); arguments as there."""

    def __init__(self, database: TuningDatabase, target: tvm.target.Target, target_name: str, trials: int,
                 progress: Callable[[str], None] | None = None, runner: ms.runner.Runner | str = "local"):
        self.database = database
        self.target = target
        self.target_name = target_name
        self.trials = trials
        self.progress = progress
        self.runner = runner

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        return tune_and_apply(self.database, mod, self.target, self.target_name, self.trials, self.progress, self.runner)
