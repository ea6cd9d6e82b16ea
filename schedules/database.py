"""The tuning database: one JSON file of the best knobs found per workload, reused across runs.

A record is keyed by (scheme, direction, weight shape, input shape, stride, density bucket, target);
its value holds the knobs, the measured median seconds of the tuned kernel, that of the default
knobs and of PyTorch dense when the tuner measured them. Writes are atomic
(:func:`devices.files.atomic_write_text`) and merge with what another process wrote meanwhile. A file that is not valid JSON,
or was written by another tool or another TVM version, is moved aside untouched (``*.corrupt-<time>``
or ``*.foreign-<time>``) with a warning, and a fresh database is started.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import tvm

from devices.files import atomic_write_text
from schedules.errors import TuningDatabaseError
from schedules.kernels.knobs import Knobs

FORMAT_NAME = "mest-tvm/schedules tuning database"
FORMAT_VERSION = 1
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
        """Inverse of :meth:`to_json`."""
        return cls(
            Knobs.from_json(data["knobs"]),
            float(data["seconds"]),
            data.get("default_seconds"),
            data.get("torch_seconds"),
            int(data.get("trials", 0)),
        )


def default_path() -> Path:
    """``$MEST_TVM_TUNING_DB`` or ``~/.cache/mest-tvm/tuning.json``."""
    env = os.environ.get("MEST_TVM_TUNING_DB")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "mest-tvm" / "tuning.json"


def _read(path: Path) -> dict[str, dict]:
    """Records of a database file; a bad file is moved aside with a warning and gives no records."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        return _set_aside(path, "corrupt", f"not a readable JSON file ({type(err).__name__})")
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        return _set_aside(path, "foreign", "not a mest-tvm tuning database")
    if data.get("version") != FORMAT_VERSION or data.get("tvm") != tvm.__version__:
        return _set_aside(path, "foreign", f"written for version {data.get('version')} / TVM {data.get('tvm')}, this is {FORMAT_VERSION} / TVM {tvm.__version__}")
    records = data.get("records")
    if not isinstance(records, dict):
        return _set_aside(path, "corrupt", "its records are not a JSON object")
    bad = next((key for key, record in records.items() if not _is_record(record)), None)
    if bad is not None:
        return _set_aside(path, "corrupt", f"its record {bad[:80]!r} is not a tuning record")
    return records


def _is_record(data: object) -> bool:
    """Whether ``data`` is what :meth:`Record.to_json` writes (knobs of the right types, times > 0)."""
    try:
        record = Record.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    if not isinstance(data["knobs"], dict):
        return False
    knobs = record.knobs.to_json()
    times = [record.seconds] + [t for t in (record.default_seconds, record.torch_seconds) if t is not None]
    return (type(knobs.pop("tile_outer")) is bool and all(type(v) is int and v >= 0 for v in knobs.values())
            and all(type(t) in (int, float) and math.isfinite(t) and t > 0 for t in times) and record.trials >= 0)


def _set_aside(path: Path, why: str, reason: str) -> dict:
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, aside)
    except OSError as err:
        raise TuningDatabaseError(f"tuning database {path} is {reason}, and cannot be set aside: {err.strerror}") from None
    warnings.warn(f"tuning database {path} is {reason}; kept it as {aside} and started a fresh one", stacklevel=3)
    return {}


class TuningDatabase:
    """Best knobs per :class:`Workload`, persisted in one JSON file.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The file; default :func:`default_path`. Created on the first :meth:`commit`.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._records = _read(self.path)

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, workload: Workload) -> Record | None:
        """The record of ``workload``, or None when it was never tuned."""
        data = self._records.get(workload.key())
        return Record.from_json(data) if data is not None else None

    def commit(self, workload: Workload, record: Record, replace: bool = False) -> None:
        """Store ``record`` (keeping a faster one already there unless ``replace``); write atomically.

        Raises
        ------
        TuningDatabaseError
            When the file cannot be written.
        """
        on_disk = _read(self.path) if self.path.exists() else {}
        merged = {**on_disk, **self._records}
        old = merged.get(workload.key())
        if old is None or replace or float(old["seconds"]) > record.seconds:
            merged[workload.key()] = record.to_json()
        self._records = merged
        payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tvm": tvm.__version__, "records": merged}
        try:
            atomic_write_text(self.path, json.dumps(payload, indent=1, sort_keys=True))
        except OSError as err:
            raise TuningDatabaseError(f"cannot write tuning database {self.path}: {err.strerror or err}") from None
