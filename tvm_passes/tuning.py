"""The tuning database of a compilation: a directory a user keeps, reuses and ships.

Layout of ``DIR``:

- ``meta.json``: ``{"format": "mest-tune-db", "version": 1, "tvm": <TVM version>}``;
- ``dense-<target>/database_workload.json`` + ``database_tuning_record.json``: MetaSchedule's JSON
  database of the dense operators for one target (legalized and fused PrimFuncs: first conv,
  shortcuts, classifier, kept-dense and channel-compacted convs, element-wise groups). One per target
  because MetaSchedule keys its records by workload only, and a schedule tuned for x86 must not be
  applied to an ARM build;
- ``sparse.json``: the records of the sparse kernels, in the format of ``schedules.database`` (its
  tuner writes them, :class:`~tvm_passes.kernels.SchedulesKernels` reads them); ``schedules`` sets a
  bad one aside itself, and its warning is passed on.

A corrupt database, or one from another TVM version, is not used: a warning is given, the old files
and ``dense-*`` directories are renamed aside (``<name>.set-aside-<time>``, contents untouched) and a
fresh database starts.
A record always wins over :class:`~tvm_passes.schedule_dense_conv.ScheduleDenseConv`'s default
schedule, so tune with enough trials (a few dozen MetaSchedule trials over the ~20 dense tasks of
ResNet-32 gave slower schedules than the default one): before keeping the records, compare
``python -m benchmarks.inference`` on the tuned database with a run on an empty one (``--tune-db``).
Tuning measures on this machine (MetaSchedule's local builder and runner) or, for another target, on a
device of a tracker (``RPCRunner``); timing an emulated target would tune for qemu, so it is refused.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from schedules.database import TuningDatabase as SparseDatabase

from .errors import CompileError

FORMAT = "mest-tune-db"
VERSION = 1
_MS_FILES = ("database_workload.json", "database_tuning_record.json")


def default_database_dir() -> Path:
    """``$XDG_CACHE_HOME/mest-tvm/tune-db`` (``~/.cache/mest-tvm/tune-db`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mest-tvm" / "tune-db"


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class TuningDatabase:
    """Open (or create) the tuning database in ``path``.

    Parameters
    ----------
    path : str or Path
        The database directory (created if missing).
    warn : callable, optional
        Receives a one-line warning when a corrupt or foreign database is set aside.
    """

    def __init__(self, path: str | Path, warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.warn = warn or (lambda message: None)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CompileError(f"cannot create the tuning database {self.path}: {exc.strerror}") from exc
        problem = self._problem()
        if problem:
            self._set_aside(problem)
        _write_json_atomic(self.path / "meta.json", {"format": FORMAT, "version": VERSION, "tvm": tvm.__version__})
        self._dense: dict[str, ms.database.JSONDatabase] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.sparse = SparseDatabase(self.path / "sparse.json")
        for warning in caught:
            self.warn(str(warning.message))

    def _dense_dirs(self) -> list[Path]:
        return sorted(p for p in self.path.glob("dense-*") if p.is_dir() and ".set-aside-" not in p.name)

    def dense(self, target_name: str) -> ms.database.JSONDatabase:
        """MetaSchedule's database of the dense operators for ``target_name`` (opened once)."""
        if target_name not in self._dense:
            files = [str(self.path / f"dense-{target_name}" / name) for name in _MS_FILES]
            Path(files[0]).parent.mkdir(exist_ok=True)
            try:
                self._dense[target_name] = ms.database.JSONDatabase(*files, allow_missing=True)
            except tvm.error.TVMError as exc:  # a record MetaSchedule cannot parse
                self._set_aside(f"MetaSchedule cannot read it ({str(exc).strip().splitlines()[-1][:100]})")
                Path(files[0]).parent.mkdir(exist_ok=True)
                self._dense[target_name] = ms.database.JSONDatabase(*files, allow_missing=True)
        return self._dense[target_name]

    def _problem(self) -> str:
        meta = self.path / "meta.json"
        if not meta.exists() and not self._dense_dirs():
            return ""
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return "its meta.json is missing or corrupt"
        if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
            return "it is not a mest-tvm tuning database"
        if info.get("tvm") != tvm.__version__:
            return f"it was written by TVM {info.get('tvm')}, this is TVM {tvm.__version__}"
        for directory in self._dense_dirs():
            for name in _MS_FILES:
                path = directory / name
                try:
                    lines = path.read_text().splitlines() if path.exists() else []
                    for line in lines:
                        if line.strip():
                            json.loads(line)
                except (OSError, ValueError):
                    return f"{directory.name}/{name} is corrupt"
        return ""

    def _set_aside(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in [self.path / "meta.json", *self._dense_dirs()]:
            if path.exists():
                path.rename(path.with_name(f"{path.name}.set-aside-{stamp}"))
        self._dense = {}
        self.warn(
            f"tuning database {self.path} not used: {problem}; its files were kept as *.set-aside-{stamp}, "
            "a fresh database starts"
        )

    def _untuned_tasks(self, mod: tvm.IRModule, target: tvm.target.Target, database) -> list:
        tasks = []
        for task in ms.relax_integration.extract_tasks(mod, target):
            prim = task.mod["main"]
            if prim.attrs is not None and ("mest.fqn" in prim.attrs or "tir.is_scheduled" in prim.attrs):
                continue  # a sparse kernel: scheduled by schedules, tuned by its tuner
            if not database.has_workload(task.mod):
                tasks.append(task)
        return tasks

    def tune_and_apply(
        self,
        mod: tvm.IRModule,
        target: tvm.target.Target,
        target_name: str,
        trials: int,
        progress: Callable[[str], None] | None = None,
        runner: ms.runner.Runner | str = "local",
    ) -> tvm.IRModule:
        """Tune the dense operators the database lacks (if ``trials``), then apply the database.

        Parameters
        ----------
        mod : tvm.IRModule
            The legalized and fused module.
        target : tvm.target.Target
            Target of the build.
        target_name : str
            Its name in the ``devices`` table (selects ``dense-<target_name>``).
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
        """
        database = self.dense(target_name)
        if trials > 0:
            if "num-cores" not in target.export():
                # MetaSchedule's mutators and rules need the core count in the target.
                target = tvm.target.Target({**target.export(), "num-cores": os.cpu_count() or 1})
            tasks = self._untuned_tasks(mod, target, database)
            if tasks:
                if progress:
                    progress(
                        f"tuning {len(tasks)} dense operators, {trials} trials (MetaSchedule, XGBoost cost model; "
                        f"per-task progress in {self.path / 'logs' / 'logs'})"
                    )
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    tasks, work_dir=str(self.path / "logs"), space="post-order-apply"
                )
                try:
                    ms.tune.tune_tasks(
                        tasks=contexts,
                        task_weights=weights,
                        work_dir=str(self.path / "logs"),
                        max_trials_global=trials,
                        # every task gets its share in the first round (MetaSchedule gives each task
                        # num_trials_per_iter trials in turn until the global budget is spent)
                        num_trials_per_iter=max(1, min(64, trials // len(tasks))),
                        builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300.0),
                        runner=runner,
                        database=database,
                        cost_model="xgb",
                    )
                except tvm.error.TVMError as exc:
                    raise CompileError(f"MetaSchedule tuning failed: {str(exc).strip().splitlines()[-1][:200]}") from exc
        with target, database, tvm.transform.PassContext(opt_level=3):
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
