"""``python -m schedules.bench``: sparse kernels against PyTorch, per layer, scheme, density, direction.

For every distinct sparse 3x3 layer of the model (ResNet-32 by default) at batch 64, each scheme and
density, it times in this one process, interleaved round by round (the machine is shared): our
forward, grad-input and grad-weight kernels and the whole layer's forward + backward through
:class:`schedules.layer.SparseConv2d`; PyTorch dense (oneDNN) for the same; PyTorch with a mask
(``conv2d(x, w * mask)``, what the MEST reference does). It prints medians and ratios
(``dense / ours``, ``masked / ours``), the model-weighted totals (each shape times its layer count),
build times, and writes everything to a JSON file. Kernels come from a cache that consults the tuning
database first (``--db``), so a tuned database shows tuned kernels.

The channel scheme's "ours" is PyTorch's dense conv on the compacted weight.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from schedules.cache import KernelCache
from schedules.database import TuningDatabase
from schedules.formats import SCHEMES
from schedules.layer import SparseConv2d
from schedules.masks import random_mask
from schedules.measure import interleaved, torch_conv_backward
from schedules.workloads import ConvLayer, select_layers

DIRECTIONS = ("forward", "grad_input", "grad_weight", "fwd+bwd")


def _ours(layer: SparseConv2d, x: torch.Tensor, dy: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Our four measured callables for one layer (channel: PyTorch on the compacted weight)."""
    x_grad = x.detach().clone().requires_grad_()

    def step() -> None:
        layer.values.grad = None
        x_grad.grad = None
        layer(x_grad).backward(dy)

    if layer.scheme == "channel":
        fmt = layer.format
        compact = fmt.compact_weight()[: fmt.filters_used].contiguous()
        kept = torch.from_numpy(fmt.indices["kept"][: fmt.filters_used].astype("int64"))
        dy_kept = dy.index_select(1, kept).contiguous()
        return {
            "forward": lambda: layer(x),
            "grad_input": lambda: torch_conv_backward(dy_kept, x, compact, layer.stride, (True, False, False))[0],
            "grad_weight": lambda: torch_conv_backward(dy_kept, x, compact, layer.stride, (False, True, False))[1],
            "fwd+bwd": step,
        }
    kernels = layer.kernels(tuple(x.shape))
    fmt = layer.format
    y = torch.empty(layer.output_shape(tuple(x.shape)))
    dx = torch.empty_like(x)
    dvalues = torch.empty_like(fmt.values)
    forward_args = list(fmt.buffers("forward").values())
    grad_input_args = list(fmt.buffers("grad_input").values())
    grad_weight_args = list(fmt.buffers("grad_weight").values())
    import tvm  # noqa: PLC0415 - after torch, and only for the TVM schemes

    def device(arrays: list) -> list:
        return [a if isinstance(a, torch.Tensor) else tvm.runtime.tensor(a) for a in arrays]

    forward_args, grad_input_args, grad_weight_args = device(forward_args), device(grad_input_args), device(grad_weight_args)
    return {
        "forward": lambda: kernels["forward"](x, *forward_args, y),
        "grad_input": lambda: kernels["grad_input"](dy, *grad_input_args, dx),
        "grad_weight": lambda: kernels["grad_weight"](x, dy, *grad_weight_args, dvalues),
        "fwd+bwd": step,
    }


def _torch(weight: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor, dy: torch.Tensor, stride: int) -> dict[str, Callable[[], object]]:
    """PyTorch's four callables, dense (``mask is None``) or masked like the MEST reference."""
    w = weight.detach().clone().requires_grad_()
    x_grad = x.detach().clone().requires_grad_()
    effective = (lambda: w * mask) if mask is not None else (lambda: w)

    def grad_weight() -> torch.Tensor:
        grad = torch_conv_backward(dy, x, weight, stride, (False, True, False))[1]
        return grad * mask if mask is not None else grad

    def step() -> None:
        w.grad = None
        x_grad.grad = None
        torch.nn.functional.conv2d(x_grad, effective(), stride=stride, padding=1).backward(dy)

    return {
        "forward": lambda: torch.nn.functional.conv2d(x, effective().detach(), stride=stride, padding=1),
        "grad_input": lambda: torch_conv_backward(dy, x, effective().detach(), stride, (True, False, False))[0],
        "grad_weight": grad_weight,
        "fwd+bwd": step,
    }


def bench_layer(layer: ConvLayer, scheme: str, density: float, batch: int, cache: KernelCache, rounds: int, number: int, seed: int = 0) -> dict:
    """Measure one (layer, scheme, density); returns a JSON-ready record."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(layer.weight_shape(), generator=generator) * 0.1
    mask = random_mask(scheme, layer.weight_shape(), density, generator)
    x = torch.randn(layer.x_shape(batch), generator=generator)
    sparse = SparseConv2d(weight, mask, scheme, stride=layer.stride, cache=cache)
    builds_before, seconds_before = cache.builds, cache.build_seconds
    start = time.perf_counter()
    dy = torch.randn(sparse.output_shape(tuple(x.shape)), generator=generator)
    ours = _ours(sparse, x, dy)
    build_seconds = time.perf_counter() - start
    dense, masked = _torch(weight, None, x, dy, layer.stride), _torch(weight, mask, x, dy, layer.stride)
    record = {
        "layer": layer.name,
        "count": layer.count,
        "scheme": scheme,
        "density": density,
        "nnz": sparse.format.nnz,
        "actual_density": sparse.format.nnz / weight.numel(),
        "builds": cache.builds - builds_before,
        "build_seconds": cache.build_seconds - seconds_before if cache.builds > builds_before else 0.0,
        "setup_seconds": build_seconds,
        "directions": {},
    }
    for direction in DIRECTIONS:
        times = interleaved({"ours": ours[direction], "dense": dense[direction], "masked": masked[direction]}, rounds, number)
        ours_s, dense_s, masked_s = (times[k].median_s for k in ("ours", "dense", "masked"))
        record["directions"][direction] = {
            "ours_s": ours_s,
            "torch_dense_s": dense_s,
            "torch_masked_s": masked_s,
            "vs_dense": dense_s / ours_s,
            "vs_masked": masked_s / ours_s,
        }
    return record


def _totals(records: list[dict]) -> list[dict]:
    """Model-weighted sums per (scheme, density): each layer shape counted as many times as it occurs."""
    totals = []
    keys = sorted({(r["scheme"], r["density"]) for r in records}, key=lambda k: (SCHEMES.index(k[0]), -k[1]))
    for scheme, density in keys:
        rows = [r for r in records if r["scheme"] == scheme and r["density"] == density]
        entry = {"scheme": scheme, "density": density, "directions": {}}
        for direction in DIRECTIONS:
            ours = sum(r["count"] * r["directions"][direction]["ours_s"] for r in rows)
            dense = sum(r["count"] * r["directions"][direction]["torch_dense_s"] for r in rows)
            masked = sum(r["count"] * r["directions"][direction]["torch_masked_s"] for r in rows)
            entry["directions"][direction] = {"ours_s": ours, "torch_dense_s": dense, "torch_masked_s": masked, "vs_dense": dense / ours, "vs_masked": masked / ours}
        totals.append(entry)
    return totals


def markdown_table(records: list[dict], totals: list[dict]) -> str:
    """The results as a markdown table: ``dense / ours`` ratios per direction, model totals last."""
    header = "| layer | scheme | density | " + " | ".join(DIRECTIONS) + " |"
    lines = [header, "|" + "---|" * (3 + len(DIRECTIONS))]
    for r in records:
        cells = " | ".join(f"{r['directions'][d]['vs_dense']:.2f}x" for d in DIRECTIONS)
        lines.append(f"| {r['layer']} (x{r['count']}) | {r['scheme']} | {r['density']:.0%} | {cells} |")
    for t in totals:
        cells = " | ".join(f"**{t['directions'][d]['vs_dense']:.2f}x**" for d in DIRECTIONS)
        lines.append(f"| measured layers, weighted by count | {t['scheme']} | {t['density']:.0%} | {cells} |")
    return "\n".join(lines)


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream, indent=1)
    os.replace(temporary, path)


def _print_record(record: dict) -> None:
    cells = "  ".join(
        f"{d} {v['ours_s'] * 1e3:7.2f}ms {v['vs_dense']:5.2f}x/{v['vs_masked']:5.2f}x" for d, v in record["directions"].items()
    )
    print(f"{record['layer']:13s} {record['scheme']:9s} {record['density']:4.0%}  {cells}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m schedules.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", help="model whose layer shapes are measured (resnet32, resnet20)")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated schemes")
    parser.add_argument("--densities", default="0.1,0.05", help="comma-separated densities")
    parser.add_argument("--layers", default="", help="comma-separated layer names to keep (default all)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per measurement (medians)")
    parser.add_argument("--number", type=int, default=3, help="calls per round")
    parser.add_argument("--db", default=None, help="tuning database (JSON); default the user's cache one")
    parser.add_argument("--target", default="x86")
    parser.add_argument("--out", default="runs/schedules-bench.json", help="JSON file written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = parse_args(argv)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEMES]
    try:
        if unknown:
            raise ValueError(f"unknown scheme {', '.join(unknown)}")
        layers = select_layers(args.model, args.layers)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    densities = [float(d) for d in args.densities.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    cache = KernelCache(TuningDatabase(args.db), target=args.target)
    print(f"{args.model} batch {args.batch}, {torch.get_num_threads()} threads; ratios are PyTorch dense / ours and PyTorch masked / ours", flush=True)
    records = []
    for density in densities:
        for scheme in schemes:
            for layer in layers:
                records.append(bench_layer(layer, scheme, density, args.batch, cache, args.rounds, args.number))
                _print_record(records[-1])
    totals = _totals(records)
    print(f"\nmeasured layers of {args.model}, each weighted by its layer count:")
    for entry in totals:
        cells = "  ".join(f"{d} {v['vs_dense']:5.2f}x/{v['vs_masked']:5.2f}x" for d, v in entry["directions"].items())
        print(f"  {entry['scheme']:9s} {entry['density']:4.0%}  {cells}")
    print("\n" + markdown_table(records, totals) + "\n")
    print(f"kernel builds: {cache.builds}, {cache.build_seconds:.1f} s in total, {cache.build_seconds / max(cache.builds, 1):.3f} s each")
    payload = {
        "model": args.model,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "number": args.number,
        "target": args.target,
        "records": records,
        "totals": totals,
        "builds": cache.builds,
        "build_seconds": cache.build_seconds,
    }
    _write_json(Path(args.out), payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
