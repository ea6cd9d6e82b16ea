"""Tuner of the sparse kernels: a knob search ranked by an XGBoost model, measured through ``devices``.

Why not MetaSchedule: our templates have data-dependent loop extents (a CSR row's range comes from
``row_ptr``); MetaSchedule's default space and post-processors (``DisallowDynamicLoop``,
``RewriteParallelVectorizeUnroll``) reject every such candidate (``shared/notes/tvm.md``), and its
custom spaces sample decisions of schedule primitives, while our template is built directly from a
handful of knobs (:mod:`schedules.kernels.knobs`). So the search is ours: the knob space of a
template is enumerated (a few dozen points), the default is measured first, then batches of
candidates chosen by an ``xgboost.XGBRanker`` (pairwise ranking objective, one query group per
workload, features = knobs + workload shape, trained on every measurement of the run so it carries
over from layer to layer) until ``trials`` candidates are measured; the best few are then re-timed
round-robin with the default (the machine may be shared) and the fastest is kept. Measurements go through a
``devices`` session (``local``, ``rpc``, ``tracker:HOST:PORT:KEY``), so tuning a remote ARM board is
the same command; through a tracker, every free device of the key measures at once (a
:class:`devices.fleet.Fleet`: each batch of candidates is spread over them, the finalists are
re-timed on one, a device lost mid-tune hands its candidate to another) and the measurements of
each device are printed. The best knobs go into the JSON tuning database; a workload already tuned with at
least as many trials is reused without searching.

Command::

    python -m schedules.tune --model resnet32 --scheme irregular --density 0.1 --trials 16

writes into the tuning database that training and ``python -m mest.compile`` read
(:mod:`schedules.database`; ``--tune-db DIR`` for another one).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from devices.cli import CommandParser
from devices.fleet import Fleet
from devices.timing import time_calls
from schedules.cache import compile_kernel, workload
from schedules.database import Record, TuningDatabase, Workload
from schedules.errors import TuningDatabaseError
from schedules.formats import DIRECTIONS, SparseFormat, pack
from schedules.kernels import output_shape
from schedules.kernels.gather_conv import gather_extent
from schedules.kernels.knobs import Knobs, gather_space, grad_weight_space
from schedules.masks import random_mask
from schedules.schemes import SCHEME_SPECS
from schedules.threads import num_threads
from schedules.torch_reference import torch_conv_backward
from schedules.workloads import MODELS, ConvLayer, select_layers



def knob_space(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> list[Knobs]:
    """The candidates of a kernel's template, the default (resolved) first."""
    walk = fmt.entries(direction)
    y_shape = output_shape(fmt, x_shape, stride)
    if direction == "grad_weight":
        space = grad_weight_space(y_shape[2], y_shape[3], x_shape[0], walk.group * walk.taps, num_threads())
    else:
        space = gather_space(*_gather_extent(direction, x_shape, y_shape, stride), walk.group)
    default = knob_default(fmt, direction, x_shape, stride)
    return [default] + [k for k in space if k != default]


def features(knobs: Knobs, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> list[float]:
    """Feature vector of one candidate: its knobs and its workload's shape."""
    walk = fmt.entries(direction)
    density = fmt.capacity / float(np.prod(fmt.weight_shape))
    return [
        knobs.rows, knobs.width, float(knobs.tile_outer), knobs.lanes, knobs.chunks,
        knobs.rows * max(knobs.width, knobs.lanes) * walk.group * walk.taps,
        walk.group, walk.taps, walk.rows, walk.src_channels, x_shape[0], x_shape[2], x_shape[3], stride,
        density, DIRECTIONS.index(direction),
    ]


class KnobRanker:
    """XGBoost pairwise ranker of candidates, one query group per workload, refit after each batch."""

    def __init__(self, seed: int = 0) -> None:
        self._groups: list[tuple[list[list[float]], list[float]]] = []
        self._model = None
        self._seed = seed

    def add(self, rows: list[list[float]], seconds: list[float]) -> None:
        """Add (or extend) the measurements of the current workload; call :meth:`new_group` between workloads."""
        if not self._groups:
            self._groups.append(([], []))
        self._groups[-1][0].extend(rows)
        self._groups[-1][1].extend(seconds)
        self._fit()

    def new_group(self) -> None:
        """Start the measurements of another workload."""
        if not self._groups or self._groups[-1][0]:
            self._groups.append(([], []))

    def _fit(self) -> None:
        import xgboost  # noqa: PLC0415 - heavy, needed only when tuning

        groups = [(x, y) for x, y in self._groups if len(x) >= 2]
        if sum(len(x) for x, _ in groups) < 4:
            return
        features_, labels, sizes = [], [], []
        for rows, seconds in groups:
            order = np.argsort(np.argsort(-np.asarray(seconds)))  # fastest gets the highest relevance
            features_.extend(rows)
            labels.extend(order.tolist())
            sizes.append(len(rows))
        model = xgboost.XGBRanker(objective="rank:pairwise", n_estimators=50, max_depth=4, learning_rate=0.3, random_state=self._seed)
        model.fit(np.asarray(features_, dtype=np.float32), np.asarray(labels, dtype=np.float32), group=sizes)
        self._model = model

    def rank(self, rows: list[list[float]], rng: random.Random) -> list[int]:
        """Indices of ``rows``, most promising first (random order before the model has data)."""
        order = list(range(len(rows)))
        if self._model is None:
            rng.shuffle(order)
            return order
        scores = self._model.predict(np.asarray(rows, dtype=np.float32))
        return sorted(order, key=lambda i: -float(scores[i]))


@dataclass(frozen=True)
class TuneResult:
    """Outcome of tuning one kernel.

    Attributes
    ----------
    workload : Workload
        What was tuned.
    record : Record
        Best knobs and times (from the database when reused).
    reused : bool
        True when the database already had it and nothing was measured.
    """

    workload: Workload
    record: Record
    reused: bool


def _arguments(session, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, rng: np.random.Generator) -> list:
    y_shape = output_shape(fmt, x_shape, stride)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    dy = rng.standard_normal(y_shape, dtype=np.float32)
    buffers = [b.numpy() if isinstance(b, torch.Tensor) else b for b in fmt.buffers(direction).values()]
    if direction == "forward":
        arrays = [x, *buffers, np.zeros(y_shape, np.float32)]
    elif direction == "grad_input":
        arrays = [dy, *buffers, np.zeros(x_shape, np.float32)]
    else:
        arrays = [x, dy, *buffers, np.zeros(fmt.capacity, np.float32)]
    return [session.array(a) for a in arrays]


class _Measurements:
    """Candidates of one kernel, built here (in this thread) and timed on any device of a fleet.

    Each device gets the kernel's arguments once (the same seeded data everywhere).
    """

    def __init__(self, fleet: Fleet, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int,
                 seed: int) -> None:
        self.fleet, self.fmt, self.direction, self.x_shape, self.stride, self.seed = fleet, fmt, direction, x_shape, stride, seed
        self._arguments: dict[int, list] = {}

    def build(self, knobs: Knobs) -> Any:
        """One candidate compiled for the fleet's target."""
        return compile_kernel(self.fmt, self.direction, self.x_shape, self.stride, self.fleet.target.name, knobs)

    def arguments(self, session) -> list:
        """The kernel's arguments on ``session``'s device."""
        if id(session) not in self._arguments:
            self._arguments[id(session)] = _arguments(session, self.fmt, self.direction, self.x_shape, self.stride,
                                                      np.random.default_rng(self.seed))
        return self._arguments[id(session)]

    def load(self, session, executable: Any) -> Any:
        return session.load(executable, name=f"{self.fmt.scheme}_{self.direction}")

    def seconds(self, knobs: list[Knobs], number: int = 3, repeat: int = 5) -> list[float]:
        """Median seconds of each candidate, the candidates spread over the fleet's devices."""
        def measure(session, executable: Any) -> float:
            module = self.load(session, executable)
            return session.time(module, "main", self.arguments(session), number=number, repeat=repeat).median_s

        return self.fleet.map(measure, [self.build(k) for k in knobs])

    def confirm(self, finalists: dict[int, Knobs]) -> dict[int, float]:
        """:func:`confirm` of the finalists on one device (times of one device compare fairly)."""
        built = {index: self.build(knobs) for index, knobs in finalists.items()}
        return self.fleet.run(lambda session: confirm(
            session, {index: self.load(session, exe) for index, exe in built.items()}, self.arguments(session)))


def confirm(session, modules: dict[int, object], arguments: list, rounds: int = 5, number: int = 3) -> dict[int, float]:
    """Re-time finalists round-robin (one run each per round) and return their medians.

    On a shared machine load comes in bursts; interleaving the finalists makes their comparison fair.
    """
    runs: dict[int, list[float]] = {index: [] for index in modules}
    for _ in range(rounds):
        for index, module in modules.items():
            runs[index].append(session.time(module, "main", arguments, number=number, repeat=1).median_s)
    return {index: float(np.median(values)) for index, values in runs.items()}


def torch_dense_seconds(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, rounds: int = 5) -> float:
    """Median seconds of PyTorch's dense conv for the same direction (host only)."""
    weight = torch.randn(fmt.weight_shape)
    x = torch.randn(x_shape)
    dy = torch.randn(output_shape(fmt, x_shape, stride))
    call = {
        "forward": lambda: torch.nn.functional.conv2d(x, weight, stride=stride, padding=1),
        "grad_input": lambda: torch_conv_backward(dy, x, weight, stride, (True, False, False))[0],
        "grad_weight": lambda: torch_conv_backward(dy, x, weight, stride, (False, True, False))[1],
    }[direction]
    return time_calls(call, runs=rounds, number=2).median_s


def tune_kernel(
    devices,
    database: TuningDatabase,
    ranker: KnobRanker,
    fmt: SparseFormat,
    direction: str,
    x_shape: tuple[int, ...],
    stride: int,
    trials: int,
    batch_size: int = 4,
    seed: int = 0,
    progress=None,
    retune: bool = False,
    finalists_count: int = 3,
) -> TuneResult:
    """Search the knobs of one kernel and commit the best to ``database``.

    Parameters
    ----------
    devices : devices.sessions.Session or devices.fleet.Fleet
        Where candidates are measured: each batch is spread over a fleet's devices, and the
        finalists are re-timed on one of them.
    database : TuningDatabase
        Read first (a record with at least ``trials`` trials is reused), written at the end.
    ranker : KnobRanker
        The XGBoost ranking model shared by the run's workloads.
    fmt, direction, x_shape, stride
        The kernel.
    trials : int
        Candidates to measure at most (the whole space if smaller).
    batch_size : int
        Candidates measured between two refits of the ranker.
    seed : int
        Seed of the random choices.
    progress : tqdm.tqdm, optional
        Advanced by one per measured candidate.
    retune : bool
        Search even when the database already has the workload.
    finalists_count : int
        Best candidates re-timed, interleaved with the default, before choosing.

    Returns
    -------
    TuneResult
    """
    fleet = Fleet.of(devices)
    key = workload(fmt, direction, x_shape, stride, fleet.target.name)
    space = knob_space(fmt, direction, x_shape, stride)
    budget = min(trials, len(space))
    known = database.lookup(key)
    if known is not None and known.trials >= budget and not retune:
        if progress is not None:
            progress.update(budget)
        return TuneResult(key, known, True)
    rows = [features(k, fmt, direction, x_shape, stride) for k in space]
    measurements = _Measurements(fleet, fmt, direction, x_shape, stride, seed)
    rng = random.Random(seed)
    ranker.new_group()
    measured: dict[int, float] = {}
    default = space.index(knob_default(fmt, direction, x_shape, stride))
    pending = [default]
    while len(measured) < budget:
        if not pending:
            candidates = [i for i in ranker.rank(rows, rng) if i not in measured]
            pending = candidates[: min(batch_size, budget - len(measured))]
        batch_seconds = measurements.seconds([space[index] for index in pending])
        measured.update(zip(pending, batch_seconds))
        if progress is not None:
            progress.update(len(pending))
        ranker.add([rows[index] for index in pending], batch_seconds)
        pending = []
    finalists = sorted(measured, key=measured.get)[:finalists_count]
    finalists = list(dict.fromkeys([*finalists, default]))
    confirmed = measurements.confirm({i: space[i] for i in finalists})
    best = min(confirmed, key=confirmed.get)
    baseline = torch_dense_seconds(fmt, direction, x_shape, stride) if fleet.target.is_host else None
    record = Record(space[best], confirmed[best], confirmed[default], baseline, len(measured))
    database.commit(key, record, replace=retune)
    return TuneResult(key, record, False)


def knob_default(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> Knobs:
    """The resolved default knobs of a kernel (what an untuned build uses)."""
    from schedules.kernels.knobs import resolve_gather, resolve_grad_weight  # noqa: PLC0415

    walk = fmt.entries(direction)
    y_shape = output_shape(fmt, x_shape, stride)
    if direction == "grad_weight":
        return resolve_grad_weight(Knobs(), y_shape[2], y_shape[3], x_shape[0], walk.group * walk.taps, num_threads())
    return resolve_gather(Knobs(), *_gather_extent(direction, x_shape, y_shape, stride), walk.group)


def _gather_extent(direction: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...], stride: int) -> tuple[int, int]:
    out = x_shape if direction == "grad_input" else y_shape
    return gather_extent(out[2], out[3], direction == "grad_input" and stride == 2)


def layer_format(layer: ConvLayer, scheme: str, density: float, seed: int = 0) -> SparseFormat:
    """A random mask of ``scheme`` at ``density`` for ``layer``, packed (what tuning measures)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(layer.weight_shape(), generator=generator)
    return pack(scheme, weight, random_mask(scheme, layer.weight_shape(), density, generator))


def build_parser() -> CommandParser:
    """The command-line parser of ``python -m schedules.tune`` (each help line shows its default)."""
    parser = CommandParser(prog="python -m schedules.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", help=f"model whose sparse layers are tuned ({', '.join(MODELS)})")
    parser.add_argument("--image-size", type=int, default=32, help="input height and width (8 for the digits data)")
    parser.add_argument("--scheme", required=True, choices=[name for name, spec in SCHEME_SPECS.items() if not spec.dense_kernel],
                        help="sparsity scheme, required (channel runs a smaller dense conv: nothing to tune)")
    parser.add_argument("--density", type=float, default=0.1, help="fraction of weights kept, in (0, 1]")
    parser.add_argument("--target", default="host", help="target name of the devices table (host: this machine)")
    parser.add_argument("--session", default="local", help="devices session: local, rpc, emulator, or tracker:HOST:PORT:KEY "
                        "(every free device of KEY at once)")
    parser.add_argument("--trials", type=int, default=16, help="candidates measured per kernel at most")
    parser.add_argument("--tune-db", metavar="DIR", default=None,
                        help="tuning database directory (default: $MEST_TVM_CACHE/tune-db, the one training and mest.compile use)")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the tuned kernels (the training batch)")
    parser.add_argument("--directions", default=",".join(DIRECTIONS), help="comma-separated kernel directions")
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks and of the search")
    parser.add_argument("--retune", action="store_true",
                        help="search again even where the database has a record (default: reuse it)")
    return parser


def _check_args(args: argparse.Namespace) -> tuple[list[ConvLayer], list[str]]:
    """The layers and directions to tune; ValueError (or a devices error) names a bad argument."""
    from devices.targets import get_target  # noqa: PLC0415

    if not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density {args.density:g} is outside (0, 1]")
    for flag, value, least in (("--trials", args.trials, 0), ("--batch", args.batch, 1), ("--image-size", args.image_size, 4)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, not {value}")
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"--directions takes some of {', '.join(DIRECTIONS)}, not {args.directions!r}")
    get_target(args.target)
    return select_layers(args.model, args.layers, args.image_size), directions


def main(argv: list[str] | None = None) -> int:
    """Tune every sparse layer of a model for one scheme and density; returns the exit code."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm  # noqa: PLC0415

    from devices.errors import DeviceError  # noqa: PLC0415
    from devices.sessions import open_fleet  # noqa: PLC0415

    try:
        layers, directions = _check_args(args)
        database = TuningDatabase(args.tune_db)
    except (ValueError, DeviceError, TuningDatabaseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(num_threads())
    ranker = KnobRanker(args.seed)
    results = []
    try:
        fleet = open_fleet(args.session, args.target)
    except Exception as err:  # noqa: BLE001 - devices raises its own one-line errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    if fleet.emulated:
        print(f"warning: {args.session} session: timings under emulation are no speed of {args.target}; the records only show the search runs", file=sys.stderr)
    jobs = []
    for layer in layers:
        fmt = layer_format(layer, args.scheme, args.density, args.seed)
        for direction in directions:
            budget = min(args.trials, len(knob_space(fmt, direction, layer.x_shape(args.batch), layer.stride)))
            jobs.append((layer, fmt, direction, budget))
    with fleet, tqdm(total=sum(job[3] for job in jobs), desc=f"tuning {args.scheme} {args.density:g}", unit="trial") as bar:
        try:
            for layer, fmt, direction, _ in jobs:
                bar.set_postfix_str(f"{layer.name} {direction}")
                result = tune_kernel(fleet, database, ranker, fmt, direction, layer.x_shape(args.batch), layer.stride, args.trials, seed=args.seed, progress=bar, retune=args.retune)
                results.append((layer, direction, result))
        except DeviceError as err:  # every device lost: the records of the kernels done are kept
            print(f"error: {err}; {len(results)} of {len(jobs)} kernels tuned, kept in {database.path}", file=sys.stderr)
            return 1
    print(f"database {database.path}: {len(database)} records")
    for line in fleet.report("measurements"):
        print(line)
    for layer, direction, result in results:
        record = result.record
        torch_text = f"PyTorch dense {record.torch_seconds * 1e3:7.2f} ms ({record.torch_seconds / record.seconds:5.2f}x)" if record.torch_seconds else "PyTorch dense n/a"
        default_text = f"default {record.default_seconds * 1e3:7.2f} ms" if record.default_seconds else "default n/a"
        status = "reused" if result.reused else f"{record.trials} trials"
        print(f"{layer.name:13s} {direction:11s} best {record.seconds * 1e3:7.2f} ms  {default_text}  {torch_text}  [{status}] {record.knobs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
