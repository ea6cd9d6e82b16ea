"""``python -m benchmarks.crossover``: one compiled conv, sparse over densities against dense, each in its own process.

One bias-free 3x3 conv (``--layer in,out,size``, stride 1; batch ``--batch``) is compiled by
:func:`tvm_passes.pipeline.compile_model` dense (``tvm-dense``) and, per scheme and density of a grid,
with a random mask of that scheme forced onto the sparse kernel (``tvm-sparse <scheme> <density>``;
the crossover table is switched off for it). Each variant runs in processes of its own, alternated
round by round (:mod:`benchmarks.harness`). Printed per scheme: the dense median and each density's
sparse median (min-max), and the highest density of the grid at which sparse was faster: the
figures that :data:`tvm_passes.config.DENSE_CROSSOVER` keeps, with a margin, per target.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.harness import (
    CommandParser, Variant, VariantResult, Workload, add_protocol_arguments, at_least, database_directory, density,
    host_target, list_of, markdown_table, names_of, run_benchmark, run_command,
)

#: The densities tried per scheme by default (pattern keeps at most 4 of 9 weights of a kernel).
GRIDS: dict[str, tuple[float, ...]] = {
    "irregular": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
    "block": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
    "pattern": (0.111, 0.222, 0.333, 0.444),
}


def one_conv(params: dict) -> Workload:
    """The conv compiled dense (no ``scheme``) or sparse with a random mask; its forward is timed."""
    import torch  # noqa: PLC0415 - after mest, which this process imports first

    from benchmarks.inference import compiled_runner, tuning_database  # noqa: PLC0415
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
    forward, _ = compiled_runner(compiled, x)
    return Workload({"forward": forward}, {"kernels": sorted({layer.kernel for layer in compiled.layers}),
                                           "warnings": warnings})


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


def summarise(results: list[VariantResult]) -> tuple[dict, str]:
    """The report's crossover figures (JSON) and the printed table."""
    found = crossovers(results)
    rows = [[scheme, entry["dense"] or "failed", *(f"{d}: {ms}" for d, ms in entry["sparse"].items()), f"{entry['crossover']:g}"]
            for scheme, entry in found.items()]
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
    parser.add_argument("--target", default="host", help="target compiled for; the convs run here, so this machine's")
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
    params = {"layer": args.layer, "batch": args.batch, "target": host_target(args.target), "tune_db": args.tune_db}
    channels_in, channels_out, size = args.layer
    headline = f"conv {channels_in}->{channels_out} at {size}x{size}, batch {args.batch}"
    return run_benchmark("benchmarks.crossover", args, build_variants(args.schemes, args.densities, params), headline,
                         summarise)


if __name__ == "__main__":
    sys.exit(run_command(main))
