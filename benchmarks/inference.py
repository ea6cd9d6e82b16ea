"""``python -m benchmarks.inference``: a compiled sparse model against TVM dense and PyTorch eval, each in its own process.

For each scheme at ``--sparsity`` (90%), a ResNet (ResNet-32 by default, CIFAR shape) pruned by
magnitude from the reference's init (as the trainer's first step does) is compiled for this machine
by :func:`tvm_passes.pipeline.compile_model` and its forward pass (``--batch`` 8 images) timed against

- ``tvm-dense``: the same model, no masks, compiled by the same pipeline (so the dense operators get
  the same tuning database; ``--dense-trials`` tunes them with MetaSchedule first);
- ``pytorch-nchw`` / ``pytorch-channels-last``: the model in eval mode under ``torch.no_grad()``,
  as its user runs it (torch imported first), in either memory layout.

Each variant runs in processes of its own, alternated round by round (:mod:`benchmarks.harness`); the
compile happens in the variant's process before the timing, and its seconds are reported. Each
sparse model's logits are checked against PyTorch's in its process. ``--sparse-trials`` tunes the
sparse kernels the tuning database lacks (``schedules``' knob search) in the first process that
needs them; the records stay in the database (``--tune-db``) for the next. Reported: medians
(min-max), ``vs TVM dense`` and ``vs PyTorch`` (the faster layout), peak resident set, bytes stored.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from benchmarks.harness import (
    CommandParser, Variant, VariantResult, Workload, add_protocol_arguments, at_least, database_directory,
    format_ratio, host_target, markdown_table, mebibytes, names_of, ratio, run_benchmark, run_command, sparsity,
)
from mest.models import MODEL_NAMES, build_model
from mest.schemes import SCHEMES
from mest.sparsity import SparseState, default_profile

# Only PyTorch and the pure-PyTorch parts of mest are imported at the top: PyTorch's workers import
# this module too. TVM is imported inside the setups of our variants.

PYTORCH_VARIANTS = ("pytorch-nchw", "pytorch-channels-last")


def _input(params: dict) -> np.ndarray:
    shape = (params["batch"], 3, params["image_size"], params["image_size"])
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _model(params: dict, scheme: str | None = None) -> tuple[torch.nn.Module, SparseState | None]:
    """The model (reference init, seed 0) in eval mode, pruned by ``scheme`` when given."""
    torch.manual_seed(0)
    model = build_model(params["model"], 10, 3)
    state = SparseState.prune_init(model, default_profile(model, params["sparsity"]), scheme) if scheme else None
    return model.eval(), state


def tuning_database(params: dict, warnings: list[str]):
    """The compile tuning database of ``params["tune_db"]`` (default: the user's), warnings collected."""
    from schedules.database import TuningDatabase  # noqa: PLC0415 - our processes only

    return TuningDatabase(params["tune_db"], warn=warnings.append)


def compiled_runner(compiled, x: np.ndarray):
    """The compiled model's forward on ``x`` as a callable, and the Relax VM."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    data = tvm.runtime.tensor(x)
    return (lambda: vm["main"](data)), vm


def compile_timed(model: torch.nn.Module, masks: dict, schemes: dict, params: dict, database, kernels) -> tuple:
    """Compile for ``params["target"]``; returns the compiled model and the seconds it took."""
    from tvm_passes.config import CompileConfig  # noqa: PLC0415
    from tvm_passes.pipeline import compile_model  # noqa: PLC0415

    shape = (params["batch"], 3, params["image_size"], params["image_size"])
    config = CompileConfig(params["target"], batch=params["batch"], tune_trials=params["dense_trials"])
    start = time.perf_counter()
    compiled = compile_model(model, masks, schemes, shape, config, kernels, database=database,
                             tuning_runner="local" if params["dense_trials"] else None)
    return compiled, time.perf_counter() - start


# ---- the variants' setups (run in their workers) ----------------------------------------------

def pytorch_eval(params: dict) -> Workload:
    """PyTorch eval-mode forward in ``params["layout"]`` (``nchw`` or ``channels_last``)."""
    layout = torch.channels_last if params["layout"] == "channels_last" else torch.contiguous_format
    model, _ = _model(params)
    model = model.to(memory_format=layout)
    x = torch.from_numpy(_input(params)).contiguous(memory_format=layout)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return Workload({"forward": forward})


def tvm_dense(params: dict) -> Workload:
    """The model compiled dense by our pipeline."""
    from tvm_passes.kernels import SchedulesKernels  # noqa: PLC0415

    warnings: list[str] = []
    database = tuning_database(params, warnings)
    model, _ = _model(params)
    compiled, seconds = compile_timed(model, {}, {}, params, database, SchedulesKernels(params["target"]))
    forward, _ = compiled_runner(compiled, _input(params))
    return Workload({"forward": forward}, {"compile_s": seconds, "warnings": warnings,
                                           "dense_tuning_records": len(database.dense(params["target"]).get_all_tuning_records())})


def tvm_sparse(params: dict) -> Workload:
    """The model pruned by ``params["scheme"]``, compiled sparse; its logits checked against PyTorch."""
    from devices.sessions import open_session  # noqa: PLC0415
    from tvm_passes.kernels import SchedulesKernels, SparseTuning  # noqa: PLC0415

    warnings: list[str] = []
    database = tuning_database(params, warnings)
    model, state = _model(params, params["scheme"])
    session = open_session("local", params["target"]) if params["sparse_trials"] else None
    tuning = SparseTuning(session, params["sparse_trials"], warnings.append) if session else None
    try:
        compiled, seconds = compile_timed(model, state.masks, state.schemes, params, database,
                                          SchedulesKernels(params["target"], database, tuning))
    finally:
        if session is not None:
            session.close()
    x = _input(params)
    forward, vm = compiled_runner(compiled, x)
    import tvm  # noqa: PLC0415

    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    error = float(np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - expected).max())
    info = {
        "compile_s": seconds, "max_logit_error": error, "warnings": warnings,
        "kernels": sorted({layer.kernel for layer in compiled.layers}),
        "bytes": {"dense": sum(layer.bytes_dense for layer in compiled.layers),
                  "stored": sum(layer.bytes_stored for layer in compiled.layers)},
        "sparse_tuning_records": len(database),
    }
    return Workload({"forward": forward}, info)


# ---- the command --------------------------------------------------------------------------------

def build_variants(schemes: list[str], params: dict) -> list[Variant]:
    """PyTorch in both layouts, TVM dense, then TVM sparse per scheme."""
    variants = [Variant("pytorch-nchw", pytorch_eval, "torch", {**params, "layout": "nchw"}),
                Variant("pytorch-channels-last", pytorch_eval, "torch", {**params, "layout": "channels_last"}),
                Variant("tvm-dense", tvm_dense, "mest", params)]
    return variants + [Variant(f"tvm-sparse {s}", tvm_sparse, "mest", {**params, "scheme": s}) for s in schemes]


def table_rows(results: list[VariantResult]) -> list[dict]:
    """One row per variant: forward time, ratios, memory, compile seconds, bytes, logit error."""
    by_name = {r.variant.name: r for r in results}
    pytorch = [s for s in (by_name[n].summary("forward") for n in PYTORCH_VARIANTS) if s is not None]
    fastest = min(pytorch, key=lambda s: s.median_s, default=None)
    dense = by_name["tvm-dense"].summary("forward")
    rows = []
    for result in results:
        summary = result.summary("forward")
        rows.append({
            "variant": result.variant.name, "status": "ok" if result.ok else "failed", "error": result.error,
            "forward": vars(summary) if summary else None, "vs_tvm_dense": ratio(dense, summary),
            "vs_pytorch": ratio(fastest, summary), "peak_rss_bytes": result.peak_rss_bytes(),
            "compile_s": result.fact("compile_s"), "bytes": result.fact("bytes"),
            "max_logit_error": result.fact("max_logit_error"), "kernels": result.fact("kernels"),
        })
    return rows


def _cells(row: dict) -> list[str]:
    if row["status"] != "ok":
        return [row["variant"], f"failed: {row['error']}", *["-"] * 6]
    forward = row["forward"]
    stored = row["bytes"]
    return [
        row["variant"], f"{forward['median_s'] * 1e3:.2f} ({forward['min_s'] * 1e3:.2f}-{forward['max_s'] * 1e3:.2f})",
        format_ratio(row["vs_tvm_dense"]), format_ratio(row["vs_pytorch"]), mebibytes(row["peak_rss_bytes"]),
        f"{row['compile_s']:.1f}" if row["compile_s"] is not None else "-",
        f"{stored['stored'] / 1024:.0f} / {stored['dense'] / 1024:.0f}" if stored else "-",
        f"{row['max_logit_error']:.1e}" if row["max_logit_error"] is not None else "-",
    ]


def summarise(results: list[VariantResult]) -> tuple[dict, str]:
    """The report's table (JSON) and the printed one."""
    rows = table_rows(results)
    return {"table": rows}, markdown_table(HEADER, [_cells(row) for row in rows])


HEADER = ["variant", "forward ms, median (min-max)", "vs TVM dense", "vs PyTorch", "peak RSS MiB", "compile s",
          "sparse layers KiB stored / dense", "max logit error"]


def build_parser() -> CommandParser:
    """The command's arguments."""
    parser = CommandParser(prog="python -m benchmarks.inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", choices=MODEL_NAMES, help="model compiled")
    parser.add_argument("--schemes", type=names_of("scheme", list(SCHEMES)), default=",".join(SCHEMES),
                        help="comma-separated sparsity schemes")
    parser.add_argument("--sparsity", type=sparsity, default=0.9, help="sparsity of the sparse layers, in [0, 1)")
    parser.add_argument("--batch", type=at_least(1), default=8, help="images per forward pass (static batch)")
    parser.add_argument("--image-size", type=at_least(4), default=32, help="image height and width")
    parser.add_argument("--target", default="host", help="target compiled for; the models run here, so this machine's")
    parser.add_argument("--sparse-trials", type=at_least(0), default=8,
                        help="knob-search trials per sparse kernel the tuning database lacks (0: default knobs)")
    parser.add_argument("--dense-trials", type=at_least(0), default=0,
                        help="MetaSchedule trials for dense operators the tuning database lacks")
    parser.add_argument("--tune-db", type=database_directory, default=None, help="tuning database directory (default: the user's cache one)")
    add_protocol_arguments(parser, out="runs/benchmarks/inference.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = build_parser().parse_args(argv)
    params = {"model": args.model, "sparsity": args.sparsity, "batch": args.batch, "image_size": args.image_size,
              "target": host_target(args.target), "sparse_trials": args.sparse_trials,
              "dense_trials": args.dense_trials, "tune_db": args.tune_db}
    headline = f"{args.model} forward, batch {args.batch}, {args.image_size}x{args.image_size}, sparsity {args.sparsity:g}"
    return run_benchmark("benchmarks.inference", args, build_variants(args.schemes, params), headline, summarise)


if __name__ == "__main__":
    sys.exit(run_command(main))
