"""``python -m mest.compile CHECKPOINT --target T``: a trained sparse model becomes a deployable library.

Reads a checkpoint of ``mest.train``, compiles it with :func:`tvm_passes.pipeline.compile_model` for a
target of the ``devices`` table, and writes to ``--out`` (default ``<run dir>/compiled-<target>``):

- ``model.so``: the Relax VM library (cross-linked for ARM), weights and sparse formats embedded;
- ``params.npz``: the arrays the library embeds for the sparse layers (``<fqn>/<buffer>``);
- ``report.json``: per layer the scheme, density, kernel, bytes dense vs stored and time where the
  target can be timed here; the phases' and total compile time, every pass's time (``pass_profile``);
  the check against PyTorch.

With a session (``local`` by default on x86, the qemu emulator by default for ARM when installed) the
library is loaded there and its logits are compared with PyTorch eval on a random batch. armv7 has no
TVM runtime to run a whole model under emulation: its sparse kernels are run one by one by the
``devices`` kernel runner under qemu-arm and compared with the same kernels built for this host. Bad input
(no masks, an unknown target, a missing toolchain, an unreadable checkpoint, an ``--out`` that cannot be
written, a model the import cannot take) prints one ``error:`` line and exits with code 2. A corrupt
tuning database is a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from mest.cli import ArgumentParser
from mest.rundir import output_dir

EXIT_BAD_INPUT = 2


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m mest.compile", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint file of mest.train, or its run directory")
    parser.add_argument("--target", required=True, help="host (this machine), x86, arm (= arm64), arm64 or armv7 (required)")
    parser.add_argument("--tune-db", metavar="DIR", help="tuning database directory (default: $MEST_TVM_CACHE/tune-db, i.e. ~/.cache/mest-tvm/tune-db)")
    parser.add_argument("--trials", type=int, default=0, help="tune what the database lacks first: N knob-search trials per sparse kernel, "
                        "N MetaSchedule trials over the dense operators (default 0: use the database as is; "
                        "give MetaSchedule hundreds, a few dozen do worse than the default conv schedule)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: <run dir>/compiled-<target>)")
    parser.add_argument("--session", help="local | rpc | rpc:HOST:PORT | emulator | tracker:HOST:PORT:KEY (default: local on x86, "
                        "the emulator for ARM when qemu is installed)")
    parser.add_argument("--batch", type=int, default=1, help="static batch size of the compiled module (default 1)")
    parser.add_argument("--dump-ir", metavar="DIR", help="write the IR after each phase into DIR (default: none)")
    return parser


def _format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ms" if value >= 1.0 else f"{value * 1e3:.1f} us"


def _print_report(report: dict) -> None:
    print(f"compiled {report['model']} for {report['target']} in {report['compile_seconds']:.1f} s -> {report['library']}")
    header = f"{'layer':28} {'scheme':9} {'density':>7} {'kernel':9} {'dense B':>9} {'stored B':>9} {'time':>9}  note"
    print(header)
    for layer in report["layers"]:
        timing = _format_ms(layer["time_ms"])
        print(
            f"{layer['fqn']:28} {layer['scheme']:9} {layer['density']:7.3f} {layer['kernel']:9} "
            f"{layer['bytes_dense']:9d} {layer['bytes_stored']:9d} {timing:>9}  {layer['reason']}"
        )
    dense = sum(layer["bytes_dense"] for layer in report["layers"])
    stored = sum(layer["bytes_stored"] for layer in report["layers"])
    print(f"sparse layers: {dense} bytes dense, {stored} bytes stored ({dense / max(stored, 1):.1f}x smaller)")
    if report.get("model_time"):
        print(f"whole model (batch {report['batch']}): {report['model_time']}")
    if report.get("check"):
        print(f"check: {report['check']}")


def _dense_runner(session_kind: str):
    """MetaSchedule runner measuring dense candidates where the session's device is."""
    if session_kind.startswith("tracker:"):
        from tvm.s_tir import meta_schedule as ms

        _, host, port, key = session_kind.split(":")
        return ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key,
                                                       session_timeout_sec=120))
    return "local"


def run(args: argparse.Namespace) -> int:
    """Compile as the command line asks; return the exit code."""
    import numpy as np
    import torch

    from devices.files import atomic_write_bytes
    from devices.sessions import default_session_kind, open_session
    from devices.targets import EMULATION_RPC, export_library, get_target, tvm_target
    from mest.checkpoint import load_checkpoint, model_from_checkpoint
    from schedules.database import TuningDatabase
    from tvm_passes.config import CompileConfig
    from tvm_passes.errors import CompileError
    from tvm_passes.kernels import SchedulesKernels, SparseTuning
    from tvm_passes.pipeline import compile_model, load_on, time_model
    from tvm_passes.report import check_kernels, time_layers

    start = time.perf_counter()
    spec = get_target(args.target)
    session_kind = args.session or default_session_kind(spec)
    spec.require_tools(need_qemu=session_kind == "emulator")
    if args.trials < 0 or args.batch < 1:
        raise ValueError("--trials must be >= 0 and --batch >= 1")
    if args.trials and not (session_kind in ("local", "rpc") or (session_kind or "").startswith(("tracker:", "rpc:"))):
        raise ValueError(
            f"tuning for {spec.name} needs a device that measures real speed: --session tracker:HOST:PORT:KEY "
            "(emulated timings are no speed)"
        )
    checkpoint = load_checkpoint(args.checkpoint)
    if not checkpoint.schemes:
        raise ValueError(f"checkpoint {checkpoint.path} has no masks: nothing to compile sparse (train with mest.train)")
    model = model_from_checkpoint(checkpoint)
    image = checkpoint.model_spec.image_size
    shape = (args.batch, checkpoint.model_spec.in_channels, image, image)
    progress = lambda text: print(text, file=sys.stderr)  # noqa: E731
    database = TuningDatabase(args.tune_db, warn=lambda text: print(f"warning: {text}", file=sys.stderr))
    config = CompileConfig(target=spec.name, batch=args.batch, tune_trials=args.trials)
    out = Path(args.out) if args.out else checkpoint.path.parent / f"compiled-{spec.name}"

    report = {
        "model": checkpoint.model_spec.name,
        "checkpoint": str(checkpoint.path),
        "target": spec.name,
        "batch": args.batch,
        "input_shape": list(shape),
        "library": None,
        "tuning_database": str(database.path),
        "trials": args.trials,
        "compile_seconds": None,
        "phase_seconds": None,
        "pass_profile": None,
        "layers": [],
        "session": session_kind,
        "model_time": None,
        "check": None,
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_dir(out))  # written last: check up front that it can be
        if args.dump_ir:
            stack.enter_context(output_dir(Path(args.dump_ir), "--dump-ir"))
        session = stack.enter_context(open_session(session_kind, spec)) if session_kind else None
        tuning = SparseTuning(session, args.trials, progress) if args.trials else None
        kernels = SchedulesKernels(spec.name, database, tuning)
        compiled = compile_model(
            model, checkpoint.masks, checkpoint.schemes, shape, config, kernels, database=database,
            tuning_runner=_dense_runner(session_kind) if args.trials else None,
            dump_dir=args.dump_ir, progress=progress,
        )
        report["library"] = str(export_library(compiled.executable, out / "model.so", spec))
        buffer = io.BytesIO()
        np.savez(buffer, **compiled.stored_arrays)
        atomic_write_bytes(out / "params.npz", buffer.getvalue())
        report["compile_seconds"] = round(time.perf_counter() - start, 3)
        report["phase_seconds"] = {name: round(value, 3) for name, value in compiled.phase_seconds.items()}
        report["pass_profile"] = compiled.pass_profile.splitlines()
        if session is None:
            report["check"] = (
                f"not run: no session for {spec.name} (install {' '.join(spec.debian_packages)} for the emulator, "
                "or give --session)"
            )
        elif spec.emulation not in (None, EMULATION_RPC) and session.emulated:
            count, error = check_kernels(compiled.mod, tvm_target(spec), session)
            report["check"] = (
                f"{count} sparse kernels match the host build to {error:.1e} (relative) on {session.describe()}; "
                f"the whole model is not run: no TVM runtime exists for {spec.name} under emulation"
            )
        else:
            vm = load_on(session, compiled)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            logits = session.numpy(vm["main"](session.array(x)))
            with torch.no_grad():
                expected = model(torch.from_numpy(x)).numpy()
            error = float(np.abs(logits - expected).max())
            scale = float(np.abs(expected).max())
            report["check"] = f"max |logit error| {error:.2e} (largest logit {scale:.2e}) on {session.describe()}"
            if error > 1e-4 * max(scale, 1e-6) + 1e-5:
                raise CompileError(f"compiled logits differ from PyTorch eval by {error:.3e} (a compiler bug: please report)")
            time_layers(compiled.mod, compiled.layers, tvm_target(spec), session)
            report["model_time"] = time_model(session, vm, x).describe()
    report["layers"] = [layer.to_json() for layer in compiled.layers]
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    _print_report(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, turn every known failure into one ``error:`` line and exit code 2."""
    args = _parser().parse_args(argv)
    from devices.errors import DeviceError
    from mest.errors import MestError
    from schedules.errors import TuningDatabaseError
    from tvm_passes.errors import CompileError

    try:
        return run(args)
    except (MestError, CompileError, DeviceError, TuningDatabaseError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
