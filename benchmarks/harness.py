"""The one benchmark protocol: each variant in a process of its own, started as its user starts it.

Why: timed inside one process, dense PyTorch shared the cores with TVM's thread pool and ran under
the ``OMP_WAIT_POLICY=PASSIVE`` that ``import mest`` sets, and came out slower than a PyTorch user
sees it (``shared/notes/benchmarks.md``). So, here:

- The parent process times nothing. For each round it starts every variant once, in turn
  (A B C A B C ...), as ``python -m benchmarks.worker``, with the environment the user started the
  command with: the thread settings ``mest`` makes on import (:data:`schedules.threads.SET_HERE`)
  are taken out again, a value the user had set is kept.
- A worker imports first what the variant's user would: ``torch`` for a PyTorch user's process (so
  OpenMP reads the user's settings as torch loads), ``mest`` for ours (which sets its thread settings
  first, as ``python -m mest.train`` does). It records the thread variables as that import left them,
  builds the variant's steps with the variant's setup function, then for each step makes
  ``--warmup`` untimed calls and times ``--steps`` calls (:func:`devices.timing.time_calls`: the
  project's one timer), and reports the per-call times, their median, the setup's facts and its peak
  resident set (:func:`peak_rss_bytes`) as JSON.
- The summary of a variant is the median of its processes' medians with their min-max; the ratio of
  two variants is the ratio of those medians (the commands say which). A variant that fails is
  reported on one line (``error: variant NAME failed: ...``), is not started again, and its row
  says failed; the others still run.
- The report (JSON) records the machine: CPU model, cores, load average before and after, the torch
  and TVM versions and the git commit.

The parent side imports nothing of ours until the command has parsed its arguments; the worker side
imports nothing of ours before the variant's first import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: The environment variables that decide how the thread pools behave (``mest`` sets both on import).
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "TVM_NUM_THREADS")

#: What a worker may import first: a PyTorch user's process, or ours.
FIRST_IMPORTS = ("torch", "mest")


# ---- what a variant is ------------------------------------------------------------------------

@dataclass
class Workload:
    """What a variant's setup function builds in its worker.

    Attributes
    ----------
    steps : dict of str to callable
        The measured calls by name (``"step"`` for a training step); each is warmed up and timed in
        turn.
    info : dict
        JSON-ready facts known after the setup (bytes held, compile seconds, ...).
    after : callable, optional
        Called with the median seconds of each step after the timing; returns more facts (e.g. the
        share of a mutation window spent mutating).
    """

    steps: dict[str, Callable[[], object]]
    info: dict = field(default_factory=dict)
    after: Callable[[dict[str, float]], dict] | None = None


@dataclass(frozen=True, eq=False)
class Variant:
    """One thing measured, in processes of its own.

    Attributes
    ----------
    name : str
        Its row in the report (``"tvm irregular"``), unique in a run.
    setup : callable
        A module-level function ``setup(params) -> Workload``, run in the worker.
    imports_first : str
        One of :data:`FIRST_IMPORTS`.
    params : dict
        JSON-ready arguments of ``setup``.
    """

    name: str
    setup: Callable[[dict], Workload]
    imports_first: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.imports_first not in FIRST_IMPORTS:
            raise ValueError(f"imports_first must be one of {FIRST_IMPORTS}, got {self.imports_first!r}")

    def spec(self, warmup: int, steps: int) -> dict:
        """What the worker is told (JSON)."""
        return {"name": self.name, "setup": _function_path(self.setup), "imports_first": self.imports_first,
                "params": self.params, "warmup": warmup, "steps": steps}


def _function_path(function: Callable) -> str:
    """``module:function`` of a module-level function, also when its module runs as ``__main__``."""
    module = function.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise ValueError("a benchmark command runs as python -m benchmarks.<command>")
        module = spec.name
    if "." in function.__qualname__:
        raise ValueError(f"setup {function.__qualname__} must be a module-level function")
    return f"{module}:{function.__qualname__}"


def import_only(params: dict) -> Workload:
    """A setup that imports ``params["modules"]`` (after the first import) and times nothing: its
    process's peak resident set is that of a bare import."""
    for name in params["modules"]:
        importlib.import_module(name)
    return Workload({})


# ---- the parent: processes, rounds, summaries -------------------------------------------------

def user_environment() -> dict[str, str]:
    """This process's environment without the thread settings ``mest`` made in it.

    Returns
    -------
    dict of str to str
        ``os.environ`` less each variable of :data:`schedules.threads.SET_HERE` that still holds the
        value ``mest`` gave it; what the user set is kept.
    """
    environment = dict(os.environ)
    threads = sys.modules.get("schedules.threads")  # not loaded: nothing of ours touched the environment
    for name, value in getattr(threads, "SET_HERE", {}).items():
        if environment.get(name) == value:
            del environment[name]
    return environment


@dataclass(frozen=True)
class Summary:
    """One measurement of a variant over its processes.

    Attributes
    ----------
    median_s : float
        Median of the processes' medians (seconds per call).
    min_s, max_s : float
        Smallest and largest process median.
    process_medians_s : tuple of float
        Each process's median, in round order.
    """

    median_s: float
    min_s: float
    max_s: float
    process_medians_s: tuple[float, ...]

    @classmethod
    def of(cls, medians: Sequence[float]) -> Summary:
        """Summary of per-process medians (at least one)."""
        return cls(statistics.median(medians), min(medians), max(medians), tuple(medians))

    def milliseconds(self) -> str:
        """``median (min-max)`` in ms, for tables."""
        return f"{self.median_s * 1e3:.2f} ({self.min_s * 1e3:.2f}-{self.max_s * 1e3:.2f})"


@dataclass
class VariantResult:
    """Every process of one variant, or the error that stopped it.

    Attributes
    ----------
    variant : Variant
    processes : list of dict
        The workers' reports, in round order.
    error : str or None
        One line; set when a worker failed (the variant is then not started again).
    user_error : bool
        The failure was one of the project's user errors (a one-line ``error:`` of a command).
    """

    variant: Variant
    processes: list[dict] = field(default_factory=list)
    error: str | None = None
    user_error: bool = False

    @property
    def ok(self) -> bool:
        """Every round ran."""
        return self.error is None and bool(self.processes)

    def summary(self, step: str = "step") -> Summary | None:
        """The summary of one measured step (None for a failed variant or an unknown step)."""
        if not self.ok or any(step not in p["median_s"] for p in self.processes):
            return None
        return Summary.of([p["median_s"][step] for p in self.processes])

    def peak_rss_bytes(self) -> int | None:
        """Median over the processes of their peak resident set (None when a device, not a process, ran it)."""
        if not self.ok or any("peak_rss_bytes" not in p for p in self.processes):
            return None
        return int(statistics.median(p["peak_rss_bytes"] for p in self.processes))

    def fact(self, name: str) -> object:
        """A fact of the setup: the median over processes for numbers, the first process's otherwise."""
        if not self.ok or name not in self.processes[0]["info"]:
            return None
        values = [p["info"][name] for p in self.processes]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return statistics.median(values)
        return values[0]

    def to_json(self) -> dict:
        """The variant's part of the report."""
        steps = sorted({name for p in self.processes for name in p.get("median_s", {})})
        summaries = {name: self.summary(name) for name in steps}
        return {
            "name": self.variant.name, "imports_first": self.variant.imports_first,
            "setup": _function_path(self.variant.setup), "params": self.variant.params,
            "status": "ok" if self.ok else "failed", "error": self.error,
            "summary": {name: vars(s) for name, s in summaries.items() if s is not None},
            "peak_rss_bytes": self.peak_rss_bytes(),
            "processes": self.processes,
        }


def run_worker(variant: Variant, warmup: int, steps: int, environment: dict[str, str]) -> dict:
    """Run one variant in a new process and return its report (with ``"error"`` when it failed)."""
    with tempfile.TemporaryDirectory(prefix="benchmark-worker-") as directory:
        result_path = Path(directory) / "result.json"
        command = [sys.executable, "-m", "benchmarks.worker", json.dumps(variant.spec(warmup, steps)), str(result_path)]
        completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            how = (f"killed by signal {-completed.returncode}" if completed.returncode < 0
                   else f"exit code {completed.returncode}")
            lines = completed.stderr.strip().splitlines()
            result = {"error": f"the worker died ({how})" + (f": {lines[-1]}" if lines else ""), "user_error": False}
    if "error" in result:
        result["stderr_tail"] = completed.stderr[-4000:]
    return result


def _print_now(line: str) -> None:
    print(line, flush=True)


def run_rounds(variants: Sequence[Variant], rounds: int, warmup: int, steps: int,
               log: Callable[[str], None] = _print_now) -> list[VariantResult]:
    """Run every variant ``rounds`` times, alternating (A B C A B C ...), each run a process of its own.

    Parameters
    ----------
    variants : sequence of Variant
        Names unique.
    rounds, warmup, steps : int
        Processes per variant; untimed and timed calls of each step per process.
    log : callable
        Receives one progress line per process; a failure is printed to stderr as one line.

    Returns
    -------
    list of VariantResult
        In the order of ``variants``.
    """
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names repeat: {names}")
    environment = user_environment()
    results = [VariantResult(v) for v in variants]
    for round_index in range(rounds):
        for result in results:
            if result.error is not None:
                continue
            load = list(os.getloadavg())
            process = {**run_worker(result.variant, warmup, steps, environment), "load_before": load}
            result.processes.append(process)
            if "error" in process:
                result.error, result.user_error = process["error"], bool(process.get("user_error"))
                print(f"error: variant {result.variant.name} failed: {result.error}", file=sys.stderr, flush=True)
                continue
            medians = ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in process["median_s"].items())
            log(f"round {round_index + 1}/{rounds} {result.variant.name}: {medians or 'no steps'}; "
                f"peak RSS {process['peak_rss_bytes'] / 2**20:.0f} MiB (pid {process['pid']})")
    return results


def exit_code(results: Sequence[VariantResult]) -> int:
    """0 when every variant ran; 2 when one was refused with a user error; 1 when one crashed."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return 0
    return 2 if all(r.user_error for r in failed) else 1


# ---- the worker -------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """Peak resident set of this process so far.

    ``VmHWM`` of ``/proc/self/status`` on Linux: ``ru_maxrss`` survives ``execve``, so a worker
    started by a parent of 1 GB would report at least 1 GB. Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _measure(spec: dict) -> dict:
    module, _, function = spec["setup"].partition(":")
    workload = getattr(importlib.import_module(module), function)(spec["params"])
    from devices.timing import time_calls  # noqa: PLC0415 - after the first import (stdlib only)

    timings = {name: time_calls(step, runs=spec["steps"], warmup=spec["warmup"]) for name, step in workload.steps.items()}
    medians = {name: timing.median_s for name, timing in timings.items()}
    info = dict(workload.info)
    if workload.after is not None:
        info.update(workload.after(medians))
    return {"step_s": {name: list(t.runs) for name, t in timings.items()}, "median_s": medians, "info": info,
            "peak_rss_bytes": peak_rss_bytes()}


def describe_failure(err: Exception) -> tuple[str, bool]:
    """One line for a worker's failure, and whether it is one of the project's user errors."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    try:
        from mest.cli import user_errors  # noqa: PLC0415 - only when a worker fails

        if isinstance(err, user_errors()):
            return first_line, True
    except ImportError:
        pass
    return f"{type(err).__name__}: {first_line}", False


def worker_main(argv: Sequence[str]) -> int:
    """``python -m benchmarks.worker SPEC RESULT``: run one variant here, write its report to ``RESULT``.

    Returns
    -------
    int
        0, 2 for a user error, 1 for any other failure (the report says which).
    """
    spec, result_path = json.loads(argv[0]), Path(argv[1])
    result: dict = {"pid": os.getpid(), "variant": spec["name"]}
    code = 0
    try:
        importlib.import_module(spec["imports_first"])
        # As the first import left them: what OpenMP read as torch loaded, or what mest chose.
        result["environment"] = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        result.update(_measure(spec))
    except Exception as err:  # noqa: BLE001 - every failure is reported to the parent, which goes on
        result["error"], result["user_error"] = describe_failure(err)
        result["traceback"] = traceback.format_exc()
        code = 2 if result["user_error"] else 1
    result_path.write_text(json.dumps(result))  # the parent reads it after this process has exited
    return code


# ---- the machine and the report ---------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> dict | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def machine_facts() -> dict:
    """The machine, its load average now (``load_before``) and the versions measured."""
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": _version("torch"), "tvm": _version("apache-tvm"),
        "git": _git_commit(), "load_before": list(os.getloadavg()),
    }


def report(command: str, args: argparse.Namespace, machine: dict, results: Sequence[VariantResult], **extra) -> dict:
    """The JSON report of a command; adds ``load_after`` to ``machine``."""
    machine = {**machine, "load_after": list(os.getloadavg())}
    environment = user_environment()
    return {
        "command": command,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "user_thread_settings": {name: environment.get(name) for name in THREAD_VARIABLES},
        "protocol": {"rounds": args.rounds, "warmup": args.warmup, "steps": args.steps,
                     "summary": "median of the per-process medians (min-max over processes)"},
        "variants": [r.to_json() for r in results],
        **extra,
    }


def run_benchmark(command: str, args: argparse.Namespace, variants: Sequence[Variant], headline: str,
                  summarise: Callable[[list[VariantResult]], tuple[dict, str]]) -> int:
    """What every command does once its arguments are checked: run the rounds, print, write the report.

    Parameters
    ----------
    command : str
        ``benchmarks.<name>``, for the report.
    args : argparse.Namespace
        The parsed arguments (with ``rounds``, ``warmup``, ``steps`` and ``out``).
    variants : sequence of Variant
    headline : str
        The first line printed (what is measured).
    summarise : callable
        ``summarise(results) -> (fields added to the report, markdown table)``.

    Returns
    -------
    int
        The exit code (:func:`exit_code`).
    """
    machine = machine_facts()
    print(f"{headline}; {len(variants)} variants x {args.rounds} rounds, each a process of its own", flush=True)
    results = run_rounds(variants, args.rounds, args.warmup, args.steps)
    fields, table = summarise(results)
    payload = report(command, args, machine, results, **fields)
    print("\n" + machine_line(payload["machine"]) + "\n\n" + table + "\n")
    write_report(args.out, payload)
    return exit_code(results)


def write_report(path: Path, payload: dict) -> None:
    """Write the JSON report atomically and say where."""
    from mest.io import atomic_write_text  # noqa: PLC0415 - the parent imports ours after parsing

    atomic_write_text(path, json.dumps(payload, indent=1))
    print(f"wrote {path}")


def machine_line(machine: dict) -> str:
    """One line for the printed table: CPU, cores, load before -> after."""
    before = "/".join(f"{v:.2f}" for v in machine["load_before"])
    after = "/".join(f"{v:.2f}" for v in machine.get("load_after", os.getloadavg()))
    return (f"{machine['cpu']}, {machine['cores']} cores; load average (1/5/15 min) {before} before, {after} after; "
            f"torch {machine['torch']}, TVM {machine['tvm']}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(numerator: Summary | float | None, denominator: Summary | float | None) -> float | None:
    """``numerator / denominator`` of two medians (summaries or seconds); None when one is missing."""
    if numerator is None or denominator is None:
        return None
    top = numerator.median_s if isinstance(numerator, Summary) else numerator
    bottom = denominator.median_s if isinstance(denominator, Summary) else denominator
    return top / bottom


def format_ratio(value: float | None) -> str:
    """A ratio as ``1.23x`` (``-`` when missing)."""
    return "-" if value is None else f"{value:.2f}x"


def mebibytes(value: float | None) -> str:
    """Bytes as MiB, for tables (``-`` when missing)."""
    return "-" if value is None else f"{value / 2**20:.0f}"


# ---- the commands' arguments ------------------------------------------------------------------

class _DefaultsInHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, unless the help says it already (or it is a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (``error: ...``, exit code 2) and each flag's default in its help."""

    def __init__(self, **kwargs) -> None:
        super().__init__(formatter_class=_DefaultsInHelp, **kwargs)

    def error(self, message: str) -> None:  # argparse's would print the usage first
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def integer(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return integer


def density(text: str) -> float:
    """An argparse type: a fraction of weights kept, in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a density is in (0, 1], got {text}")
    return value


def sparsity(text: str) -> float:
    """An argparse type: a fraction of weights removed, in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a sparsity is in [0, 1), got {text}")
    return value


def names_of(what: str, known: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``known`` names (at least one)."""
    def name_list(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        return names

    return name_list


def list_of(parse: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of values, each read by ``parse`` (at least one)."""
    def values(text: str) -> list:
        parsed = [parse(part) for part in text.split(",") if part.strip()]
        if not parsed:
            raise argparse.ArgumentTypeError(f"give at least one {parse.__name__}")
        return parsed

    values.__name__ = f"{parse.__name__} list"
    return values


def database_directory(text: str) -> str:
    """An argparse type: a tuning database directory (existing, or to be created; not a file)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; a tuning database here is a directory")
    return text


def output_file(text: str) -> Path:
    """An argparse type: a path a report can be written to (not a directory; its folder writable)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {folder} is not a writable directory")
    return path


def host_target(name: str) -> str:
    """The canonical name of target ``name`` if it runs on this machine, else a one-line user error."""
    from devices.errors import UnknownTargetError  # noqa: PLC0415 - imports TVM: after parsing
    from devices.targets import get_target  # noqa: PLC0415

    spec = get_target(name)
    if not spec.is_host:
        raise UnknownTargetError(f"target {name!r} does not run on this machine, and the benchmarks time it here")
    return spec.name


def add_protocol_arguments(parser: argparse.ArgumentParser, out: str, steps: int = 10) -> None:
    """The flags every command shares: rounds, warm-up, timed steps and the report file."""
    parser.add_argument("--rounds", type=at_least(1), default=3,
                        help="processes per variant, the variants alternating round by round")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed calls per process before timing")
    parser.add_argument("--steps", type=at_least(1), default=steps, help="timed calls per process (their median)")
    parser.add_argument("--out", type=output_file, default=Path(out), help="JSON report written")


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's ``main``: the project's user errors print one ``error:`` line, exit code 2."""
    from mest.cli import run_main  # noqa: PLC0415 - the parent imports ours only now

    return run_main(main, argv, interrupted="interrupted")
