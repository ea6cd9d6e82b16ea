"""``python -m benchmarks.step_profile``: where the time of one compiled training step goes, kernel by kernel.

The step is the ``compiled`` backend's (:class:`mest.compiled.CompiledTraining`, set up as the
trainer does: ``resnet32-cifar10-ems-90``'s optimizer, the reference init pruned by ``--scheme`` to
``--sparsity``, buffers for the run's peak). After ``--warmup`` steps, ``--steps`` steps run with the
Relax VM's instrument timing every call (``vm.set_instrument``): the report gives each kernel's total
milliseconds per step and share of the instrumented time, the top ``--top`` kernels, and the share of
each kind (sparse kernels by direction, dense convs, BatchNorm and the rest of the fused glue, the
optimizer's update, the VM's own builtins). One process; a profile, not a comparison (the
instrument's own cost, a few microseconds a call, is included in the total, not in the kernels').
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.harness import CommandParser, at_least, run_command, sparsity
from devices.files import atomic_write_text
from mest.config import get_preset
from mest.models import MODEL_NAMES, build_model
from mest.schemes import SCHEMES
from mest.sparsity import SparseState, default_profile

PRESET = "resnet32-cifar10-ems-90"


def kind_of(symbol: str) -> str:
    """The kind of a kernel, from its name (see the module docstring)."""
    if symbol.startswith("sparse_"):
        for direction in ("grad_weight", "grad_input", "forward"):
            if direction in symbol:
                return f"sparse {direction}"
    if symbol.startswith("vm.") or "." in symbol:
        return "VM builtins"
    if "conv" in symbol:
        return "dense conv (3 directions, with fused glue)"
    if "matmul" in symbol or "dense" in symbol:
        return "classifier"
    if "cast" in symbol or "sum" in symbol or "sqrt" in symbol or "mean" in symbol:
        return "batch norm statistics and reductions"
    return "other fused glue (BN apply, ReLU, adds, SGD)"


def profile(compiled, images: torch.Tensor, labels: torch.Tensor, lr: float, steps: int) -> dict[str, float]:
    """Seconds per step of every called function of ``train_step``, by symbol."""
    totals: dict[str, float] = defaultdict(float)
    starts: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            starts.append(time.perf_counter())
        else:
            totals[str(symbol)] += time.perf_counter() - starts.pop()
        return 0

    compiled.vm.set_instrument(instrument)
    try:
        for _ in range(steps):
            compiled.step(images, labels, lr)
    finally:
        compiled.vm.set_instrument(None)
    return {symbol: seconds / steps for symbol, seconds in totals.items()}


def build_parser() -> CommandParser:
    """The command's arguments."""
    parser = CommandParser(prog="python -m benchmarks.step_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", choices=MODEL_NAMES, help="model trained")
    parser.add_argument("--scheme", default="irregular", choices=list(SCHEMES), help="sparsity scheme")
    parser.add_argument("--sparsity", type=sparsity, default=0.9, help="sparsity of the sparse layers, in [0, 1)")
    parser.add_argument("--batch", type=at_least(1), default=64, help="images per step")
    parser.add_argument("--image-size", type=at_least(4), default=32, help="image height and width")
    parser.add_argument("--warmup", type=at_least(1), default=2, help="steps before profiling")
    parser.add_argument("--steps", type=at_least(1), default=5, help="profiled steps")
    parser.add_argument("--top", type=at_least(1), default=12, help="kernels listed")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/step-profile.json"), help="JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Profile the step; returns the exit code."""
    args = build_parser().parse_args(argv)
    from mest.compiled import CompiledTraining, to_compiled  # noqa: PLC0415 - imports TVM

    config = get_preset(PRESET).override(model=args.model, scheme=args.scheme, sparsity=args.sparsity,
                                         batch_size=args.batch)
    torch.manual_seed(config.seed)
    model = build_model(config.model, 10, 3)
    sparse = SparseState.prune_init(model, default_profile(model, config.sparsity), config.scheme)
    to_compiled(model, sparse, capacity=sparse.peak_counts(config.mutation_schedule()))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    size = args.image_size
    compiled = CompiledTraining(model, build_model(config.model, 10, 3), sparse, optimizer,
                                model_key=f"{config.model}/10/3/{size}", input_shape=(args.batch, 3, size, size),
                                progress=lambda line: print(line, file=sys.stderr))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    for _ in range(args.warmup):
        compiled.step(images, labels, config.lr)
    start = time.perf_counter()
    compiled.step(images, labels, config.lr)
    step_s = time.perf_counter() - start
    per_kernel = profile(compiled, images, labels, config.lr, args.steps)
    total = sum(per_kernel.values())
    kinds: dict[str, float] = defaultdict(float)
    for symbol, seconds in per_kernel.items():
        kinds[kind_of(symbol)] += seconds
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[: args.top]
    report = {"model": args.model, "scheme": args.scheme, "sparsity": args.sparsity, "batch": args.batch,
              "step_s_uninstrumented": step_s, "instrumented_s": total,
              "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])), "top": top, "kernels": per_kernel}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(f"{args.model} {args.scheme} {args.sparsity:g}, batch {args.batch}: step {step_s * 1e3:.0f} ms "
          f"({total * 1e3:.0f} ms instrumented, {len(per_kernel)} functions)")
    print("| kind | ms/step | share |\n|---|---|---|")
    for kind, seconds in report["kinds"].items():
        print(f"| {kind} | {seconds * 1e3:.1f} | {seconds / total:.1%} |")
    print("| kernel | ms/step | share |\n|---|---|---|")
    for symbol, seconds in top:
        print(f"| {symbol} | {seconds * 1e3:.2f} | {seconds / total:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
