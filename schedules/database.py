"""The tuning database: one directory holding every tuning record, which a user keeps, reuses and ships.

Where: the ``--tune-db DIR`` of a command, else ``$MEST_TVM_CACHE/tune-db`` (:func:`default_directory`).
Training (through :class:`schedules.cache.KernelCache`), ``python -m schedules.tune`` and
``python -m mest.compile`` all open it with :class:`TuningDatabase`. Layout of ``DIR``:

- ``meta.json``: ``{"format": FORMAT_NAME, "version": FORMAT_VERSION, "tvm": <TVM version>}``;
- ``sparse.json``: ``{"records": {<Workload.key()>: <Record.to_json()>}}``, the best knobs of our sparse
  kernels, keyed by (scheme, direction, weight shape, input shape, stride, density bucket, target),
  with the median seconds of the tuned kernel, of the default knobs and of PyTorch dense when the
  tuner measured them;
- ``dense-<target>/database_workload.json`` + ``database_tuning_record.json``: MetaSchedule's JSON
  database of the dense operators of compiled models, one per target (MetaSchedule keys records by
  workload only, and a schedule tuned for x86 must not reach an ARM build).

Why the whole directory is one class here, in ``schedules``: the kernel cache of this room reads the
sparse records and must not import ``tvm_passes``, so the directory and its rules live in the lowest
room that reads it. The dense half is MetaSchedule's own files; opening them needs only
``tvm.s_tir.meta_schedule`` (imported on first use), not Relax, so :meth:`TuningDatabase.dense` is here
too, and :mod:`tvm_passes.tuning` adds only the Relax-level loop (extract the dense tasks, tune them,
apply the records).

What cannot be trusted is set aside, never deleted (:func:`devices.files.set_aside`, with a warning, and
a fresh start): a ``meta.json`` of another tool, format or TVM version sets all of the directory's
files aside; a ``sparse.json`` that is not JSON or holds a record that does not parse is set aside (its
good records are kept and written back at the next commit); a ``dense-<target>`` directory that
MetaSchedule rejects is set aside. Writes are atomic and merge with what another process wrote meanwhile.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from devices.cache import cache_root
from devices.files import atomic_write_text, set_aside
from schedules.errors import TuningDatabaseError, TuningDatabaseWarning
from schedules.kernels.knobs import Knobs

FORMAT_NAME = "mest-tvm tuning database"
FORMAT_VERSION = 2

DIRECTORY_NAME = "tune-db"
META_NAME = "meta.json"
SPARSE_NAME = "sparse.json"
#: MetaSchedule's two files in each ``dense-<target>`` directory.
DENSE_FILES = ("database_workload.json", "database_tuning_record.json")
#: What this TVM raises when MetaSchedule rejects a database file: tvm_ffi maps a C++ failure to
#: RuntimeError (``tvm.error.InternalError`` is one), TypeError, ValueError, KeyError, IndexError or
#: AttributeError (this TVM has no ``tvm.error.TVMError``). Seen: ``[1, 2]`` as a workload line gives
#: TypeError, a bad base64 string InternalError, a record of an unknown workload RuntimeError.
METASCHEDULE_ERRORS = (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError)
#: Density buckets (fraction of kept weights) a record stands for; a layer uses the nearest in log scale.
DENSITY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def density_bucket(density: float) -> float:
    """Nearest bucket of :data:`DENSITY_BUCKETS` in log scale."""
    density = min(max(density, DENSITY_BUCKETS[0]), 1.0)
    return min(DENSITY_BUCKETS, key=lambda b: abs(math.log(b) - math.log(density)))


@dataclass(frozen=True)
class Workload:
    """What a tuning record is for.

    Attributes
    ----------
    scheme, direction : str
        Sparsity scheme and kernel direction.
    weight_shape, x_shape : tuple of int
        ``[O, I, 3, 3]`` and NCHW input shape.
    stride : int
        1 or 2.
    density : float
        Density bucket (see :func:`density_bucket`).
    target : str
        Target name of the ``devices`` table.
    """

    scheme: str
    direction: str
    weight_shape: tuple[int, ...]
    x_shape: tuple[int, ...]
    stride: int
    density: float
    target: str

    def key(self) -> str:
        """The record's key in the JSON file."""
        shape = lambda s: "x".join(str(v) for v in s)  # noqa: E731
        return f"{self.scheme}|{self.direction}|w{shape(self.weight_shape)}|x{shape(self.x_shape)}|s{self.stride}|d{self.density:g}|{self.target}"


@dataclass(frozen=True)
class Record:
    """A tuning result.

    Attributes
    ----------
    knobs : Knobs
        Best knobs found.
    seconds : float
        Median seconds of the tuned kernel.
    default_seconds : float or None
        Median seconds of the default knobs, measured in the same run.
    torch_seconds : float or None
        Median seconds of PyTorch dense for the same direction, same run.
    trials : int
        Candidates measured.
    """

    knobs: Knobs
    seconds: float
    default_seconds: float | None = None
    torch_seconds: float | None = None
    trials: int = 0

    def to_json(self) -> dict:
        """Plain dict for the file."""
        return {
            "knobs": self.knobs.to_json(),
            "seconds": self.seconds,
            "default_seconds": self.default_seconds,
            "torch_seconds": self.torch_seconds,
            "trials": self.trials,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        """Inverse of :meth:`to_json`.

        Raises
        ------
        KeyError, TypeError, ValueError
            When ``data`` is not a record (a missing field, a time that is not a positive number...).
        """
        if not isinstance(data, dict) or not isinstance(data.get("knobs"), dict):
            raise TypeError("a tuning record is a JSON object with a knobs object")
        trials = data.get("trials", 0)
        if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
            raise ValueError(f"trials {trials!r} is not a count")
        return cls(
            Knobs.from_json(data["knobs"]),
            _seconds(data["seconds"]),
            None if data.get("default_seconds") is None else _seconds(data["default_seconds"]),
            None if data.get("torch_seconds") is None else _seconds(data["torch_seconds"]),
            trials,
        )


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{value!r} is not a time in seconds")
    return float(value)


def _set_aside(path: Path, why: str) -> Path | None:
    """:func:`devices.files.set_aside`, with a file that cannot be renamed a :class:`TuningDatabaseError`."""
    try:
        return set_aside(path, why)
    except OSError as err:
        raise TuningDatabaseError(f"tuning database {path} is {why} and cannot be set aside: "
                                  f"{err.strerror or err}") from None


def default_directory() -> Path:
    """``<cache root>/tune-db``: ``$MEST_TVM_CACHE/tune-db`` (see :func:`devices.cache.cache_root`)."""
    return cache_root() / DIRECTORY_NAME


def _warn(message: str) -> None:
    warnings.warn(message, TuningDatabaseWarning, stacklevel=3)


def _parse_records(data: object) -> tuple[dict[str, Record], bool]:
    """The records of a ``sparse.json`` payload and whether all of it parsed."""
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, dict):
        return {}, False
    parsed, intact = {}, True
    for key, value in records.items():
        try:
            parsed[key] = Record.from_json(value)
        except (KeyError, TypeError, ValueError, AttributeError):  # AttributeError: a record that is no object
            intact = False
    return parsed, intact


class TuningDatabase:
    """The tuning database in one directory (see the module docstring for its layout and rules).

    Parameters
    ----------
    path : str or os.PathLike, optional
        The directory; default :func:`default_directory`. Created if missing.
    warn : callable, optional
        Receives the one-line warning when something is set aside (default: ``warnings.warn`` with
        :class:`~schedules.errors.TuningDatabaseWarning`).

    Raises
    ------
    TuningDatabaseError
        When the directory cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike | None = None, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path) if path is not None else default_directory()
        self.warn = warn or _warn
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TuningDatabaseError(f"cannot create the tuning database {self.path}: {err.strerror or err}") from None
        self._check_meta()
        self._records = self._read_sparse()
        self._dense: dict[str, Any] = {}

    @property
    def sparse_path(self) -> Path:
        """The file of the sparse records."""
        return self.path / SPARSE_NAME

    def dense_path(self, target_name: str) -> Path:
        """The directory of MetaSchedule's records for ``target_name``."""
        return self.path / f"dense-{target_name}"

    # -- meta.json ------------------------------------------------------------------------------
    def _ours(self) -> list[Path]:
        names = [META_NAME, SPARSE_NAME]
        return [p for p in sorted(self.path.iterdir()) if p.name in names or (p.name.startswith("dense-") and p.is_dir() and "." not in p.name)]

    def _meta_problem(self) -> str:
        meta = self.path / META_NAME
        if not meta.exists():
            return "its meta.json is missing" if self._ours() else ""
        try:
            info = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return "its meta.json is not readable JSON"
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME or info.get("version") != FORMAT_VERSION:
            return "it is not a mest-tvm tuning database of this version"
        if info.get("tvm") != tvm.__version__:
            return f"it was written by TVM {info.get('tvm')}, this is TVM {tvm.__version__}"
        return ""

    def _check_meta(self) -> None:
        problem = self._meta_problem()
        if problem:
            kept = [aside for path in self._ours() if (aside := _set_aside(path, "foreign")) is not None]
            self.warn(f"tuning database {self.path} not used: {problem}; kept its files as "
                      f"{', '.join(p.name for p in kept) or 'nothing'}; a fresh database starts")
        if not (self.path / META_NAME).exists():
            self._write(self.path / META_NAME, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tvm": tvm.__version__})

    def _write(self, path: Path, payload: dict) -> None:
        try:
            atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True))
        except OSError as err:
            raise TuningDatabaseError(f"cannot write tuning database {path}: {err.strerror or err}") from None

    # -- sparse records ---------------------------------------------------------------------------
    def _read_sparse(self) -> dict[str, Record]:
        path = self.sparse_path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # nested past the limit
            data, why = None, f"not a readable JSON file ({type(err).__name__})"
        else:
            why = "not a set of tuning records"
        records, intact = _parse_records(data)
        if not intact:
            if records:
                why = "holding records that do not parse"
            aside = _set_aside(path, "corrupt")
            self.warn(f"tuning records {path} are {why}; kept the file as {aside.name if aside else '(gone)'}"
                      f"{f' and its {len(records)} good records' if records else ''}; a fresh file starts")
        return records

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, workload: Workload) -> Record | None:
        """The record of ``workload``, or None when it was never tuned."""
        return self._records.get(workload.key())

    def commit(self, workload: Workload, record: Record, replace: bool = False) -> None:
        """Store ``record`` (keeping a faster one already there unless ``replace``); write atomically.

        Raises
        ------
        TuningDatabaseError
            When the file cannot be written.
        """
        merged = {**self._read_sparse(), **self._records}
        old = merged.get(workload.key())
        if old is None or replace or old.seconds > record.seconds:
            merged[workload.key()] = record
        self._records = merged
        self._write(self.sparse_path, {"records": {key: r.to_json() for key, r in merged.items()}})

    # -- MetaSchedule's dense records ---------------------------------------------------------------
    def dense(self, target_name: str) -> Any:
        """MetaSchedule's ``JSONDatabase`` of the dense operators for ``target_name`` (opened once).

        A directory MetaSchedule cannot read is set aside (:meth:`reject_dense`) and a fresh one opened.
        """
        if target_name not in self._dense:
            try:
                self._dense[target_name] = self._open_dense(target_name)
            except METASCHEDULE_ERRORS as err:
                self.reject_dense(target_name, f"MetaSchedule cannot read it ({last_line(err)})")
        return self._dense[target_name]

    def _open_dense(self, target_name: str) -> Any:
        from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415 - heavy, needed only by compilation

        directory = self.dense_path(target_name)
        directory.mkdir(exist_ok=True)
        return ms.database.JSONDatabase(str(directory / DENSE_FILES[0]), str(directory / DENSE_FILES[1]),
                                        allow_missing=True)

    def reject_dense(self, target_name: str, reason: str) -> Any:
        """Set aside the dense records of ``target_name`` (contents untouched) and open a fresh set.

        Parameters
        ----------
        target_name : str
            The target whose ``dense-<target>`` directory MetaSchedule rejected.
        reason : str
            What went wrong, for the warning.

        Returns
        -------
        tvm.s_tir.meta_schedule.database.JSONDatabase
            The fresh, empty database.
        """
        aside = _set_aside(self.dense_path(target_name), "rejected")
        self.warn(f"tuning database {self.path}: {reason}; kept {self.dense_path(target_name).name} as "
                  f"{aside.name if aside else '(gone)'}; fresh dense records start")
        self._dense[target_name] = self._open_dense(target_name)
        return self._dense[target_name]


def last_line(err: BaseException) -> str:
    """The last non-empty line of an error message (where TVM puts the reason), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines or [type(err).__name__])[-1][:160]
