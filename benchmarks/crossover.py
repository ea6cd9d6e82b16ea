"""``python -m benchmarks.crossover``: one compiled conv, sparse over densities against dense, each in its own process.

One bias-free 3x3 conv (``--layer in,out,size``, stride 1; batch ``--batch``) is compiled by
:func:`tvm_passes.pipeline.compile_model` dense (``tvm-dense``) and, per scheme and density of a grid,
with a random mask of that scheme forced onto the sparse kernel (``tvm-sparse <scheme> <density>``;
the crossover table is switched off for it). Each variant runs in processes of its own, alternated
round by round (:mod:`benchmarks.harness`). Printed per scheme: the dense median and each density's
sparse median (min-max), and the highest density of the grid at which sparse was faster: the
figures that :data:`tvm_passes.config.DENSE_CROSSOVER` keeps, with a margin, per target.

With ``--session KIND`` (``rpc:HOST:PORT``, ``tracker:HOST:PORT:KEY``, ``emulator``; parsed by
:func:`devices.sessions.open_session`) the convs are compiled here for ``--target`` and run on the
session's device, which is the process apart: the variants are loaded there once and timed by the
device's own timer, alternated round by round. Under emulation the timings are no speed of the target:
the command says so, the report records ``"emulated": true``, and no crossover is suggested.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from benchmarks.harness import (
    CommandParser, Variant, VariantResult, Workload, add_protocol_arguments, at_least, database_directory, density,
    describe_failure, exit_code, host_target, list_of, machine_facts, machine_line, markdown_table, names_of, report,
    run_benchmark, run_command, write_report,
)

#: The densities tried per scheme by default (pattern keeps at most 4 of 9 weights of a kernel).
GRIDS: dict[str, tuple[float, ...]] = {
    "irregular": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
    "block": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
    "pattern": (0.111, 0.222, 0.333, 0.444),
}


def compile_conv(params: dict) -> tuple:
    """The conv compiled for ``params["target"]``, dense (no ``scheme``) or sparse with a random mask;
    returns the compiled model, its input and the warnings of the tuning database."""
    import torch  # noqa: PLC0415 - after mest, which this process imports first

    from benchmarks.inference import tuning_database  # noqa: PLC0415
    from schedules.masks import random_mask  # noqa: PLC0415
    from tvm_passes.config import CompileConfig  # noqa: PLC0415
    from tvm_passes.kernels import SchedulesKernels  # noqa: PLC0415
    from tvm_passes.pipeline import compile_model  # noqa: PLC0415

    channels_in, channels_out, size = params["layer"]
    shape = (params["batch"], channels_in, size, size)
    model = torch.nn.Sequential(torch.nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False)).eval()
    masks, schemes = {}, {}
    if params.get("scheme"):
        weight_shape = (channels_out, channels_in, 3, 3)
        masks = {"0.weight": random_mask(params["scheme"], weight_shape, params["density"], torch.Generator().manual_seed(0))}
        schemes = {"0.weight": params["scheme"]}
    warnings: list[str] = []
    database = tuning_database(params, warnings)
    always_sparse = CompileConfig(params["target"], batch=params["batch"], crossover={s: 1.0 for s in GRIDS})
    compiled = compile_model(model, masks, schemes, shape, always_sparse,
                             SchedulesKernels(params["target"], database), database=database)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return compiled, x, warnings


def one_conv(params: dict) -> Workload:
    """:func:`compile_conv`'s conv run in this process; its forward is timed."""
    from benchmarks.inference import compiled_runner  # noqa: PLC0415

    compiled, x, warnings = compile_conv(params)
    forward, _ = compiled_runner(compiled, x)
    return Workload({"forward": forward}, {"kernels": sorted({layer.kernel for layer in compiled.layers}),
                                           "warnings": warnings})


def run_on_session(session, variants: list[Variant], rounds: int, warmup: int, steps: int) -> list[VariantResult]:
    """Every variant loaded on the session's device once, then timed there ``rounds`` times, alternating.

    Each round of a variant is ``warmup`` untimed calls and ``steps`` timed ones by the device's timer
    (their median); a variant that does not compile or load is reported failed and the others go on.
    """
    from tvm_passes.pipeline import load_on, time_model  # noqa: PLC0415

    results, loaded = [VariantResult(v) for v in variants], {}
    for index, result in enumerate(results):
        try:
            compiled, x, warnings = compile_conv(result.variant.params)
            vm = load_on(session, compiled, f"crossover{index}")
        except Exception as err:  # noqa: BLE001 - reported as the variant's failure, as a worker's would be
            result.error, result.user_error = describe_failure(err)
            print(f"error: variant {result.variant.name} failed: {result.error}", file=sys.stderr, flush=True)
            continue
        loaded[index] = (vm, x, {"kernels": sorted({layer.kernel for layer in compiled.layers}), "warnings": warnings})
    for round_index in range(rounds):
        for index, (vm, x, info) in loaded.items():
            load = list(os.getloadavg())
            data = session.array(x)
            for _ in range(warmup):
                vm["main"](data)
            timing = time_model(session, vm, x, number=1, repeat=steps)
            results[index].processes.append({"median_s": {"forward": timing.median_s}, "step_s": {"forward": list(timing.runs)},
                                             "info": info, "emulated": timing.emulated, "load_before": load})
            print(f"round {round_index + 1}/{rounds} {results[index].variant.name}: forward {timing.median_s * 1e3:.2f} ms "
                  f"on {session.describe()}", flush=True)
    return results


def build_variants(schemes: list[str], densities: list[float] | None, params: dict) -> list[Variant]:
    """The dense conv, then each scheme's densities (its grid unless ``densities`` is given)."""
    variants = [Variant("tvm-dense", one_conv, "mest", params)]
    for scheme in schemes:
        variants += [Variant(f"tvm-sparse {scheme} {d:g}", one_conv, "mest", {**params, "scheme": scheme, "density": d})
                     for d in (densities or GRIDS[scheme])]
    return variants


def crossovers(results: list[VariantResult]) -> dict[str, dict]:
    """Per scheme: dense and sparse medians (ms), and the highest density at which sparse won."""
    dense = results[0].summary("forward")
    out: dict[str, dict] = {}
    for result in results[1:]:
        scheme, fraction = result.variant.params["scheme"], result.variant.params["density"]
        entry = out.setdefault(scheme, {"dense": dense.milliseconds() if dense else None, "sparse": {}, "crossover": 0.0})
        summary = result.summary("forward")
        entry["sparse"][f"{fraction:g}"] = summary.milliseconds() if summary else f"failed: {result.error}"
        if summary is not None and dense is not None and summary.median_s < dense.median_s:
            entry["crossover"] = max(entry["crossover"], fraction)
    return out


def summarise(results: list[VariantResult], emulated: bool = False) -> tuple[dict, str]:
    """The report's crossover figures (JSON) and the printed table; emulated timings suggest no crossover."""
    found = crossovers(results)
    if emulated:
        for entry in found.values():
            entry["crossover"] = None
    rows = [[scheme, entry["dense"] or "failed", *(f"{d}: {ms}" for d, ms in entry["sparse"].items()),
             "none (emulated)" if emulated else f"{entry['crossover']:g}"] for scheme, entry in found.items()]
    width = max((len(r) for r in rows), default=3)
    rows = [r[:-1] + [""] * (width - len(r)) + r[-1:] for r in rows]
    header = ["scheme", "dense ms", *["sparse ms by density"] * (width - 3), "sparse wins up to"]
    return {"crossover": found}, markdown_table(header, rows)


def build_parser() -> CommandParser:
    """The command's arguments."""
    parser = CommandParser(prog="python -m benchmarks.crossover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=_layer, default="64,64,16", help="the conv: in_channels,out_channels,size")
    parser.add_argument("--batch", type=at_least(1), default=4, help="images per forward pass")
    parser.add_argument("--schemes", type=names_of("scheme", list(GRIDS)), default=",".join(GRIDS),
                        help="comma-separated schemes (channel always wins: a smaller dense conv)")
    parser.add_argument("--densities", type=list_of(density), default=None,
                        help="comma-separated densities for every scheme (default: irregular and block 0.05-0.7, pattern 1/9-4/9)")
    parser.add_argument("--target", default="host",
                        help="target compiled for (without --session the convs run here, so this machine's)")
    parser.add_argument("--session", default=None,
                        help="devices session the convs run on: rpc:HOST:PORT, tracker:HOST:PORT:KEY or emulator "
                             "(emulated timings are no speed; default: none, this machine, each variant a process of its own)")
    parser.add_argument("--tune-db", type=database_directory, default=None, help="tuning database directory (default: the user's cache one)")
    add_protocol_arguments(parser, out="runs/benchmarks/crossover.json")
    return parser


def _layer(text: str) -> list[int]:
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(text)
    return [at_least(1)(part) for part in parts]


_layer.__name__ = "layer (in_channels,out_channels,size)"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = build_parser().parse_args(argv)
    channels_in, channels_out, size = args.layer
    headline = f"conv {channels_in}->{channels_out} at {size}x{size}, batch {args.batch}"
    if args.session in (None, "local"):
        params = {"layer": args.layer, "batch": args.batch, "target": host_target(args.target), "tune_db": args.tune_db}
        return run_benchmark("benchmarks.crossover", args, build_variants(args.schemes, args.densities, params), headline,
                             summarise)
    return run_through_session(args, headline)


def run_through_session(args, headline: str) -> int:
    """``main`` with ``--session``: the variants run on the session's device (see the module docstring)."""
    from devices.sessions import open_session  # noqa: PLC0415 - imports TVM: after parsing

    machine = machine_facts()
    from devices.errors import DeviceError  # noqa: PLC0415
    from devices.targets import EMULATION_RPC  # noqa: PLC0415

    with open_session(args.session, args.target) as session:
        target = session.target.name
        if session.emulated and session.target.emulation != EMULATION_RPC:
            raise DeviceError(f"{args.session} session of {target} runs single kernels only (no TVM runtime under "
                              "emulation): the compiled conv cannot run there")
        params = {"layer": args.layer, "batch": args.batch, "target": target, "tune_db": args.tune_db}
        variants = build_variants(args.schemes, args.densities, params)
        where = session.describe()
        print(f"{headline}; {len(variants)} variants x {args.rounds} rounds on {where} ({target})", flush=True)
        if session.emulated:
            print(f"warning: {args.session} session: timings under emulation are no speed of {target}; "
                  "no crossover is suggested from them", file=sys.stderr, flush=True)
        results = run_on_session(session, variants, args.rounds, args.warmup, args.steps)
        fields, table = summarise(results, emulated=session.emulated)
        payload = report("benchmarks.crossover", args, machine, results, **fields, session=where, target=target,
                         emulated=session.emulated)
    print("\n" + machine_line(payload["machine"]) + "\n\n" + table + "\n")
    write_report(args.out, payload)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(run_command(main))
