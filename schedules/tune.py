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
the same command. The best knobs go into the JSON tuning database; a workload already tuned with at
least as many trials is reused without searching.

Command::

    python -m schedules.tune --model resnet32 --scheme irregular --density 0.1 --target x86 \\
        --trials 16 --db tuning.json
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from devices.timing import time_calls
from schedules.cache import compile_kernel, workload
from schedules.database import Record, TuningDatabase, Workload
from schedules.formats import DIRECTIONS, SCHEMES, SparseFormat, pack
from schedules.kernels import output_shape
from schedules.kernels.entries import entries
from schedules.kernels.gather_conv import gather_extent
from schedules.kernels.knobs import Knobs, gather_space, grad_weight_space
from schedules.masks import random_mask
from schedules.threads import num_threads
from schedules.torch_reference import torch_conv_backward
from schedules.workloads import ConvLayer, select_layers



def knob_space(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> list[Knobs]:
    """The candidates of a kernel's template, the default (resolved) first."""
    walk = entries(fmt, direction)
    y_shape = output_shape(fmt, x_shape, stride)
    if direction == "grad_weight":
        space = grad_weight_space(y_shape[2], y_shape[3], x_shape[0], walk.group * walk.taps, num_threads())
    else:
        space = gather_space(*_gather_extent(direction, x_shape, y_shape, stride), walk.group)
    default = knob_default(fmt, direction, x_shape, stride)
    return [default] + [k for k in space if k != default]


def features(knobs: Knobs, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> list[float]:
    """Feature vector of one candidate: its knobs and its workload's shape."""
    walk = entries(fmt, direction)
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


def load_knobs(session, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, knobs: Knobs):
    """Build one candidate for the session's target and load it there."""
    executable = compile_kernel(fmt, direction, x_shape, stride, session.target.name, knobs)
    return session.load(executable, name=f"{fmt.scheme}_{direction}")


def measure_knobs(session, fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int, knobs: Knobs, arguments: list, number: int = 3, repeat: int = 5) -> float:
    """Build one candidate for the session's target and return its median seconds there."""
    module = load_knobs(session, fmt, direction, x_shape, stride, knobs)
    return session.time(module, "main", arguments, number=number, repeat=repeat).median_s


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
    session,
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
    session : devices.sessions.Session
        Where candidates are measured.
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
    key = workload(fmt, direction, x_shape, stride, session.target.name)
    space = knob_space(fmt, direction, x_shape, stride)
    budget = min(trials, len(space))
    known = database.lookup(key)
    if known is not None and known.trials >= budget and not retune:
        if progress is not None:
            progress.update(budget)
        return TuneResult(key, known, True)
    rows = [features(k, fmt, direction, x_shape, stride) for k in space]
    arguments = _arguments(session, fmt, direction, x_shape, stride, np.random.default_rng(seed))
    rng = random.Random(seed)
    ranker.new_group()
    measured: dict[int, float] = {}
    default = space.index(knob_default(fmt, direction, x_shape, stride))
    pending = [default]
    while len(measured) < budget:
        if not pending:
            candidates = [i for i in ranker.rank(rows, rng) if i not in measured]
            pending = candidates[: min(batch_size, budget - len(measured))]
        batch_rows, batch_seconds = [], []
        for index in pending:
            seconds = measure_knobs(session, fmt, direction, x_shape, stride, space[index], arguments)
            measured[index] = seconds
            batch_rows.append(rows[index])
            batch_seconds.append(seconds)
            if progress is not None:
                progress.update(1)
        ranker.add(batch_rows, batch_seconds)
        pending = []
    finalists = sorted(measured, key=measured.get)[:finalists_count]
    finalists = list(dict.fromkeys([*finalists, default]))
    confirmed = confirm(session, {i: load_knobs(session, fmt, direction, x_shape, stride, space[i]) for i in finalists}, arguments)
    best = min(confirmed, key=confirmed.get)
    baseline = torch_dense_seconds(fmt, direction, x_shape, stride) if session.target.is_host else None
    record = Record(space[best], confirmed[best], confirmed[default], baseline, len(measured))
    database.commit(key, record, replace=retune)
    return TuneResult(key, record, False)


def knob_default(fmt: SparseFormat, direction: str, x_shape: tuple[int, ...], stride: int) -> Knobs:
    """The resolved default knobs of a kernel (what an untuned build uses)."""
    from schedules.kernels.knobs import resolve_gather, resolve_grad_weight  # noqa: PLC0415

    walk = entries(fmt, direction)
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m schedules.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", help="model whose sparse layers are tuned (resnet32, resnet20)")
    parser.add_argument("--scheme", required=True, choices=[s for s in SCHEMES if s != "channel"])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--target", default="x86", help="target name of the devices table")
    parser.add_argument("--session", default="local", help="devices session: local, rpc, emulator, tracker:HOST:PORT:KEY")
    parser.add_argument("--trials", type=int, default=16, help="candidates measured per kernel at most")
    parser.add_argument("--db", default=None, help="tuning database JSON file (default: the user's cache one)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--directions", default=",".join(DIRECTIONS))
    parser.add_argument("--layers", default="", help="comma-separated layer names (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retune", action="store_true", help="search again even where the database has a record")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Tune every sparse layer of a model for one scheme and density; returns the exit code."""
    args = parse_args(argv)
    from tqdm import tqdm  # noqa: PLC0415

    from devices.sessions import open_session  # noqa: PLC0415

    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    try:
        if any(d not in DIRECTIONS for d in directions):
            raise ValueError(f"directions are {', '.join(DIRECTIONS)}")
        layers = select_layers(args.model, args.layers)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(num_threads())
    database = TuningDatabase(args.db)
    ranker = KnobRanker(args.seed)
    results = []
    try:
        session = open_session(args.session, args.target)
    except Exception as err:  # noqa: BLE001 - devices raises its own one-line errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    if session.emulated:
        print(f"warning: {args.session} session: timings under emulation are no speed of {args.target}; the records only show the search runs", file=sys.stderr)
    jobs = []
    for layer in layers:
        fmt = layer_format(layer, args.scheme, args.density, args.seed)
        for direction in directions:
            budget = min(args.trials, len(knob_space(fmt, direction, layer.x_shape(args.batch), layer.stride)))
            jobs.append((layer, fmt, direction, budget))
    with session, tqdm(total=sum(job[3] for job in jobs), desc=f"tuning {args.scheme} {args.density:g}", unit="trial") as bar:
        for layer, fmt, direction, _ in jobs:
            bar.set_postfix_str(f"{layer.name} {direction}")
            result = tune_kernel(session, database, ranker, fmt, direction, layer.x_shape(args.batch), layer.stride, args.trials, seed=args.seed, progress=bar, retune=args.retune)
            results.append((layer, direction, result))
    print(f"database {database.path}: {len(database)} records")
    for layer, direction, result in results:
        record = result.record
        torch_text = f"PyTorch dense {record.torch_seconds * 1e3:7.2f} ms ({record.torch_seconds / record.seconds:5.2f}x)" if record.torch_seconds else "PyTorch dense n/a"
        default_text = f"default {record.default_seconds * 1e3:7.2f} ms" if record.default_seconds else "default n/a"
        status = "reused" if result.reused else f"{record.trials} trials"
        print(f"{layer.name:13s} {direction:11s} best {record.seconds * 1e3:7.2f} ms  {default_text}  {torch_text}  [{status}] {record.knobs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
