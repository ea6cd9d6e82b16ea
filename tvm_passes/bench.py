"""``python -m tvm_passes.bench``: compiled sparse ResNet-32 vs the same model compiled dense vs PyTorch.

In one process, for each scheme at the given sparsity (90% by default): a ResNet-32 (CIFAR shape)
with masks of that scheme (pruned by magnitude from a random init, as the trainer's first step does)
is compiled for x86 by :func:`tvm_passes.pipeline.compile_model`, and timed against

- **TVM dense**: the same weights, no masks, compiled by the same pipeline (so the dense operators get
  the same tuning database; ``--dense-trials`` tunes them with MetaSchedule first, 0 leaves them
  untuned: the JSON says how many records the database holds);
- **PyTorch eval**: the model in eval mode (oneDNN), with the masked weights.

Timing: rounds interleave every variant (``schedules.measure.interleaved``) so bursts of load from
other processes hit all alike; medians over rounds are reported with the ratios, printed and written
as JSON (``--json``, default ``bench-tvm_passes.json``). The logits of each compiled model are
checked against PyTorch first. ``--crossover`` instead times one conv layer, sparse over a grid of
densities against the pipeline's dense conv, and prints where sparse stops winning (the numbers of
:data:`tvm_passes.config.DENSE_CROSSOVER`). ``--sparse-trials`` tunes the sparse kernels the database lacks
(``schedules``' knob search) before compiling. Not a test: a measurement on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m tvm_passes.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--schemes", default="irregular,block,pattern,channel")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=3)
    parser.add_argument("--sparse-trials", type=int, default=8, help="knob-search trials per sparse kernel the database lacks")
    parser.add_argument("--dense-trials", type=int, default=0, help="MetaSchedule trials for dense operators the database lacks")
    parser.add_argument("--tune-db", default=None, help="tuning database directory (default: the user's cache one)")
    parser.add_argument("--json", default="bench-tvm_passes.json")
    parser.add_argument("--crossover", action="store_true",
                        help="instead: time one conv layer sparse vs dense over densities, to fill DENSE_CROSSOVER")
    parser.add_argument("--layer", default="64,64,16", help="crossover layer: in,out,size (stride 1)")
    return parser.parse_args(argv)


def _one_conv(in_channels: int, out_channels: int):
    """A model of one bias-free 3x3 conv (its weight is ``0.weight``), for the crossover measurement."""
    import torch

    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False))


def _crossover(args) -> dict:
    """Per scheme, times of the sparse kernel over densities against the dense conv of the pipeline."""
    import numpy as np
    import torch
    import tvm
    from tvm import relax

    from schedules.masks import random_mask
    from schedules.measure import interleaved

    from .config import CompileConfig
    from .kernels import SchedulesKernels
    from .pipeline import compile_model
    from .tuning import TuningDatabase, default_database_dir

    in_channels, out_channels, size = (int(v) for v in args.layer.split(","))
    shape = (args.batch, in_channels, size, size)
    database = TuningDatabase(args.tune_db or default_database_dir())
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    model = _one_conv(in_channels, out_channels).eval()
    always_sparse = CompileConfig("x86", batch=args.batch, crossover={s: 1.0 for s in ("irregular", "block", "pattern")})

    def runner(masks, schemes):
        compiled = compile_model(model, masks, schemes, shape, always_sparse, SchedulesKernels("x86", database.sparse),
                                 database=database)
        vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
        return lambda: vm["main"](x)

    grids = {"irregular": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7), "block": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
             "pattern": (0.111, 0.222, 0.333, 0.444)}
    result = {"layer": args.layer, "batch": args.batch, "schemes": {}}
    for scheme in [s.strip() for s in args.schemes.split(",") if s.strip() in grids]:
        functions = {"dense": runner({}, {})}
        for density in grids[scheme]:
            mask = random_mask(scheme, (out_channels, in_channels, 3, 3), density, torch.Generator().manual_seed(0))
            functions[f"{density:g}"] = runner({"0.weight": mask}, {"0.weight": scheme})
        timing = {name: m.median_s * 1e3 for name, m in interleaved(functions, args.rounds, args.number).items()}
        dense = timing.pop("dense")
        wins = [float(d) for d, ms in timing.items() if ms < dense]
        result["schemes"][scheme] = {"dense_ms": dense, "sparse_ms": timing, "crossover": max(wins, default=0.0)}
        cells = "  ".join(f"{d}: {ms:.2f}" for d, ms in timing.items())
        print(f"{scheme:9s} dense {dense:.2f} ms | sparse ms by density {cells} | sparse wins up to {max(wins, default=0.0):g}")
        sys.stdout.flush()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = _parse(argv)
    from schedules.threads import configure_threads

    configure_threads()
    import numpy as np
    import torch
    import tvm
    from tvm import relax

    from devices.targets import get_target
    from mest.models import build_model
    from mest.sparsity import SparseState, default_profile
    from schedules.measure import interleaved
    from schedules.threads import num_threads

    from .config import CompileConfig
    from devices.sessions import open_session

    from .kernels import SchedulesKernels, SparseTuning
    from .pipeline import compile_model
    from .tuning import TuningDatabase, default_database_dir

    torch.set_num_threads(num_threads())
    if args.crossover:
        _write_json(Path(args.json), _crossover(args))
        return 0
    spec = get_target("x86")
    database = TuningDatabase(args.tune_db or default_database_dir(), warn=lambda t: print(f"warning: {t}", file=sys.stderr))
    shape = (args.batch, 3, args.image, args.image)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    config = CompileConfig("x86", batch=args.batch, tune_trials=args.dense_trials)
    session = open_session("local", "x86")
    runner = "local" if args.dense_trials else None
    tuning = SparseTuning(session, args.sparse_trials, lambda t: print(t, file=sys.stderr)) if args.sparse_trials else None
    results = {
        "machine": f"{platform.machine()} {spec.description}, {os.cpu_count()} cores, {num_threads()} threads",
        "model": args.model, "batch": args.batch, "image": args.image, "sparsity": args.sparsity,
        "sparse_trials": args.sparse_trials, "dense_trials": args.dense_trials,
        "schemes": {},
    }
    print(f"{args.model}, batch {args.batch}, {args.image}x{args.image}, sparsity {args.sparsity:g}; {results['machine']}")

    def vm_runner(compiled):
        vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
        data = tvm.runtime.tensor(x)
        return vm, (lambda: vm["main"](data))

    for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        torch.manual_seed(0)
        model = build_model(args.model, 10, 3)
        state = SparseState.prune_init(model, default_profile(model, args.sparsity), scheme)
        model.eval()
        start = time.perf_counter()
        sparse = compile_model(model, state.masks, state.schemes, shape, config,
                               SchedulesKernels("x86", database.sparse, tuning), database=database, tuning_runner=runner)
        sparse_compile = time.perf_counter() - start
        start = time.perf_counter()
        dense = compile_model(model, {}, {}, shape, config, SchedulesKernels("x86"), database=database,
                              tuning_runner=runner)
        dense_compile = time.perf_counter() - start
        vm, run_sparse = vm_runner(sparse)
        _, run_dense = vm_runner(dense)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            expected = model(xt).numpy()
            error = float(np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - expected).max())

            def run_torch():
                return model(xt)

            timing = interleaved({"sparse": run_sparse, "dense": run_dense, "torch": run_torch},
                                 rounds=args.rounds, number=args.number)
        ms = {name: m.median_s * 1e3 for name, m in timing.items()}
        kernels = sorted({layer.kernel for layer in sparse.layers})
        row = {
            "sparse_ms": ms["sparse"], "tvm_dense_ms": ms["dense"], "torch_ms": ms["torch"],
            "vs_tvm_dense": ms["dense"] / ms["sparse"], "vs_torch": ms["torch"] / ms["sparse"],
            "max_logit_error": error, "kernels": kernels,
            "compile_s": {"sparse": sparse_compile, "dense": dense_compile},
            "bytes": {"dense": sum(l.bytes_dense for l in sparse.layers), "stored": sum(l.bytes_stored for l in sparse.layers)},
        }
        results["schemes"][scheme] = row
        print(
            f"{scheme:9s} sparse {ms['sparse']:9.2f} ms | TVM dense {ms['dense']:9.2f} ms ({row['vs_tvm_dense']:5.2f}x) | "
            f"PyTorch {ms['torch']:8.2f} ms ({row['vs_torch']:5.2f}x) | kernels {','.join(kernels)} | "
            f"max logit err {error:.1e} | compile {sparse_compile:.1f} s"
        )
        sys.stdout.flush()
    results["dense_tuning_records"] = len(database.dense("x86").get_all_tuning_records())
    results["sparse_tuning_records"] = len(database.sparse)
    session.close()
    _write_json(Path(args.json), results)
    return 0


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
