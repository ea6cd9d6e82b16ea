"""``python -m benchmarks.kernels``: one sparse layer's kernels against PyTorch's conv, each in its own process.

For every distinct sparse 3x3 layer shape of the model (ResNet-32 by default; ``--layers`` keeps some)
at batch 64, it times four directions: ``forward``, ``grad_input``, ``grad_weight`` and the layer's
whole ``fwd+bwd`` through autograd. The variants, each in processes of its own, alternated round by
round (:mod:`benchmarks.harness`):

- ``pytorch-nchw``: PyTorch's dense conv (oneDNN) as its user runs it (torch imported first);
- ``pytorch-channels-last``: the same with input, weight and output gradient in ``torch.channels_last``;
- ``pytorch-masked <scheme> <density>``: PyTorch with a mask, ``conv2d(x, w * mask)`` (the reference);
- ``ours <scheme> <density>``: our kernels through :class:`schedules.layer.SparseConv2d` (channel:
  PyTorch's dense conv on the compacted weight), knobs from the tuning database (``--tune-db``) first.

Printed and written as JSON: per layer and direction, each variant's median (min-max over processes),
``vs dense`` (the faster dense layout over ours) and ``vs masked`` (masked over ours), and the totals
over the measured layers weighted by how often each shape occurs in the model.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import torch

from benchmarks.harness import (
    CommandParser, Summary, Variant, VariantResult, Workload, add_protocol_arguments, at_least, database_directory, density,
    format_ratio, host_target, list_of, markdown_table, names_of, ratio, run_benchmark, run_command,
)
from schedules.formats import SCHEMES
from schedules.masks import random_mask
from schedules.torch_reference import torch_conv_backward
from schedules.workloads import MODELS, ConvLayer, select_layers

# Only PyTorch and the pure-Python parts of schedules are imported at the top: PyTorch's workers import
# this module too. TVM is imported inside the setup of our variant.

DIRECTIONS = ("forward", "grad_input", "grad_weight", "fwd+bwd")
DENSE_VARIANTS = ("pytorch-nchw", "pytorch-channels-last")


def _tensors(layer: ConvLayer, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight, input and output gradient of a layer, the same in every variant's process."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(layer.weight_shape(), generator=generator) * 0.1
    x = torch.randn(layer.x_shape(batch), generator=generator)
    out_size = (layer.size - 1) // layer.stride + 1
    dy = torch.randn(batch, layer.out_channels, out_size, out_size, generator=generator)
    return weight, x, dy


def _mask(layer: ConvLayer, scheme: str, fraction: float) -> torch.Tensor:
    return random_mask(scheme, layer.weight_shape(), fraction, torch.Generator().manual_seed(1))


def _steps_name(layer: str, direction: str) -> str:
    return f"{layer} {direction}"


def _torch_steps(weight: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor, dy: torch.Tensor,
                 stride: int) -> dict[str, object]:
    """PyTorch's four callables, dense (``mask is None``) or masked like the MEST reference."""
    w = weight.detach().clone().requires_grad_()
    x_grad = x.detach().clone().requires_grad_()

    def effective() -> torch.Tensor:
        return w * mask if mask is not None else w

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


def _layers(params: dict) -> list[ConvLayer]:
    return [ConvLayer(**layer) for layer in params["layers"]]


# ---- the variants' setups (run in their workers) ----------------------------------------------

def pytorch_conv(params: dict) -> Workload:
    """PyTorch's conv in ``params["layout"]`` (``nchw`` or ``channels_last``), dense or masked (``params["scheme"]``)."""
    layout = torch.channels_last if params["layout"] == "channels_last" else torch.contiguous_format
    steps = {}
    for layer in _layers(params):
        weight, x, dy = (t.contiguous(memory_format=layout) for t in _tensors(layer, params["batch"]))
        mask = _mask(layer, params["scheme"], params["density"]) if params.get("scheme") else None
        for direction, call in _torch_steps(weight, mask, x, dy, layer.stride).items():
            steps[_steps_name(layer.name, direction)] = call
    return Workload(steps)


def ours(params: dict) -> Workload:
    """Our kernels for each layer (built here, before the timing: the build time is a fact of the setup)."""
    import tvm  # noqa: PLC0415 - our variant's process only

    from schedules.cache import KernelCache  # noqa: PLC0415
    from schedules.database import TuningDatabase  # noqa: PLC0415
    from schedules.layer import SparseConv2d  # noqa: PLC0415

    cache = KernelCache(TuningDatabase(params["tune_db"]), target=params["target"])
    steps, info = {}, {"layers": {}}
    for layer in _layers(params):
        weight, x, dy = _tensors(layer, params["batch"])
        mask = _mask(layer, params["scheme"], params["density"])
        sparse = SparseConv2d(weight, mask, params["scheme"], stride=layer.stride, cache=cache)
        builds_before, seconds_before = cache.builds, cache.build_seconds
        calls = _our_steps(sparse, x, dy, tvm)
        info["layers"][layer.name] = {"nnz": sparse.format.nnz, "actual_density": sparse.format.nnz / weight.numel(),
                                      "builds": cache.builds - builds_before,
                                      "build_s": cache.build_seconds - seconds_before}
        for direction, call in calls.items():
            steps[_steps_name(layer.name, direction)] = call
    info["tuning_records"] = len(cache.database)
    return Workload(steps, info)


def _our_steps(layer, x: torch.Tensor, dy: torch.Tensor, tvm) -> dict[str, object]:
    """Our four callables for one layer (channel: PyTorch on the compacted weight)."""
    x_grad = x.detach().clone().requires_grad_()

    def step() -> None:
        layer.values.grad = None
        x_grad.grad = None
        layer(x_grad).backward(dy)

    fmt = layer.format
    if layer.scheme == "channel":
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
    y = torch.empty(layer.output_shape(tuple(x.shape)))
    dx, dvalues = torch.empty_like(x), torch.empty_like(fmt.values)

    def arguments(direction: str) -> list:
        return [a if isinstance(a, torch.Tensor) else tvm.runtime.tensor(a) for a in fmt.buffers(direction).values()]

    forward, grad_input, grad_weight = arguments("forward"), arguments("grad_input"), arguments("grad_weight")
    return {
        "forward": lambda: kernels["forward"](x, *forward, y),
        "grad_input": lambda: kernels["grad_input"](dy, *grad_input, dx),
        "grad_weight": lambda: kernels["grad_weight"](x, dy, *grad_weight, dvalues),
        "fwd+bwd": step,
    }


# ---- the command --------------------------------------------------------------------------------

def build_variants(layers: list[ConvLayer], schemes: list[str], densities: list[float], batch: int,
                   tune_db: str | None, target: str) -> list[Variant]:
    """PyTorch dense in both layouts, then per (density, scheme) PyTorch masked and ours."""
    base = {"layers": [asdict(layer) for layer in layers], "batch": batch}
    variants = [Variant("pytorch-nchw", pytorch_conv, "torch", {**base, "layout": "nchw"}),
                Variant("pytorch-channels-last", pytorch_conv, "torch", {**base, "layout": "channels_last"})]
    for fraction in densities:
        for scheme in schemes:
            sparse = {**base, "scheme": scheme, "density": fraction}
            variants += [Variant(f"pytorch-masked {scheme} {fraction:g}", pytorch_conv, "torch", {**sparse, "layout": "nchw"}),
                         Variant(f"ours {scheme} {fraction:g}", ours, "mest", {**sparse, "tune_db": tune_db, "target": target})]
    return variants


def records(results: list[VariantResult], layers: list[ConvLayer], schemes: list[str], densities: list[float]) -> list[dict]:
    """Per (layer, scheme, density): each direction's medians and ratios (None where a variant failed)."""
    by_name = {r.variant.name: r for r in results}
    rows = []
    for fraction in densities:
        for scheme in schemes:
            mine, masked = by_name[f"ours {scheme} {fraction:g}"], by_name[f"pytorch-masked {scheme} {fraction:g}"]
            for layer in layers:
                row = {"layer": layer.name, "count": layer.count, "scheme": scheme, "density": fraction,
                       "ours": (mine.fact("layers") or {}).get(layer.name), "directions": {}}
                for direction in DIRECTIONS:
                    step = _steps_name(layer.name, direction)
                    dense = [s for s in (by_name[n].summary(step) for n in DENSE_VARIANTS) if s is not None]
                    fastest = min(dense, key=lambda s: s.median_s, default=None)
                    ours_s, masked_s = mine.summary(step), masked.summary(step)
                    row["directions"][direction] = {
                        "ours": _json(ours_s), "pytorch_masked": _json(masked_s),
                        **{name: _json(by_name[name].summary(step)) for name in DENSE_VARIANTS},
                        "vs_dense": ratio(fastest, ours_s), "vs_masked": ratio(masked_s, ours_s),
                    }
                rows.append(row)
    return rows


def _json(summary: Summary | None) -> dict | None:
    return vars(summary) if summary is not None else None


def totals(rows: list[dict]) -> list[dict]:
    """Per (scheme, density), each direction's medians summed over the layers, weighted by their count."""
    out = []
    for scheme, fraction in dict.fromkeys((r["scheme"], r["density"]) for r in rows):
        chosen = [r for r in rows if r["scheme"] == scheme and r["density"] == fraction]
        entry = {"scheme": scheme, "density": fraction, "directions": {}}
        for direction in DIRECTIONS:
            def weighted(key: str) -> float | None:
                """Sum of count x median of ``key`` (None when a variant failed)."""
                values = [(r["count"], r["directions"][direction][key]) for r in chosen]
                return None if any(v is None for _, v in values) else sum(n * v["median_s"] for n, v in values)

            mine, masked = weighted("ours"), weighted("pytorch_masked")
            fastest = min((v for v in map(weighted, DENSE_VARIANTS) if v is not None), default=None)
            entry["directions"][direction] = {"ours_s": mine, "pytorch_masked_s": masked, "fastest_dense_s": fastest,
                                              "vs_dense": ratio(fastest, mine), "vs_masked": ratio(masked, mine)}
        out.append(entry)
    return out


def _table(rows: list[dict], sums: list[dict]) -> str:
    header = ["layer", "scheme", "density", *(f"{d} ours ms (vs dense / vs masked)" for d in DIRECTIONS)]
    lines = []
    for row in rows:
        cells = []
        for direction in DIRECTIONS:
            d = row["directions"][direction]
            ours_ms = f"{d['ours']['median_s'] * 1e3:.2f}" if d["ours"] else "failed"
            cells.append(f"{ours_ms} ({format_ratio(d['vs_dense'])} / {format_ratio(d['vs_masked'])})")
        lines.append([f"{row['layer']} (x{row['count']})", row["scheme"], f"{row['density']:g}", *cells])
    for entry in sums:
        cells = [f"**{format_ratio(d['vs_dense'])} / {format_ratio(d['vs_masked'])}**" for d in entry["directions"].values()]
        lines.append(["measured layers, weighted by count", entry["scheme"], f"{entry['density']:g}", *cells])
    return markdown_table(header, lines)


def build_parser() -> CommandParser:
    """The command's arguments."""
    parser = CommandParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", choices=list(MODELS), help="model whose layer shapes are measured")
    parser.add_argument("--layers", default="", help="comma-separated layer names to keep, e.g. '64x64@16 s1' (default: all)")
    parser.add_argument("--schemes", type=names_of("scheme", SCHEMES), default=",".join(SCHEMES), help="comma-separated schemes")
    parser.add_argument("--densities", type=list_of(density), default="0.1,0.05", help="comma-separated densities, each in (0, 1]")
    parser.add_argument("--batch", type=at_least(1), default=64, help="images per call")
    parser.add_argument("--tune-db", type=database_directory, default=None,
                        help="tuning database directory (default: $MEST_TVM_CACHE/tune-db, the user's cache one)")
    parser.add_argument("--target", default="host", help="target of our kernels; they run here, so this machine's")
    add_protocol_arguments(parser, out="runs/benchmarks/kernels.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        layers = select_layers(args.model, args.layers)
    except ValueError as err:
        from mest.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(str(err)) from None
    target = host_target(args.target)
    variants = build_variants(layers, args.schemes, args.densities, args.batch, args.tune_db, target)

    def summarise(results: list[VariantResult]) -> tuple[dict, str]:
        rows = records(results, layers, args.schemes, args.densities)
        sums = totals(rows)
        return {"records": rows, "totals": sums}, _table(rows, sums)

    headline = f"{args.model}: {len(layers)} layer shapes at batch {args.batch}"
    return run_benchmark("benchmarks.kernels", args, variants, headline, summarise)


if __name__ == "__main__":
    sys.exit(run_command(main))
