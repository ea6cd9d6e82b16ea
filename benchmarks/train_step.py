"""``python -m benchmarks.train_step``: a whole MEST training step, ours against PyTorch, each in its own process.

The step is :func:`mest.trainer.train_step`, the trainer's own (forward, cross-entropy, backward,
``grad *= mask``, SGD with the ``resnet32-cifar10-ems-90`` preset's learning rate, momentum and
weight decay, ``weight *= mask``), on one random CIFAR-shaped batch (64 images of 32x32 by default),
for a ResNet (ResNet-32 by default) whose residual-stage 3x3 convs are pruned to ``--sparsity`` (90%)
from the reference's init by each scheme. The variants (``--variants``, see :data:`STEP_VARIANTS`):

- ``pytorch-nchw``: dense PyTorch as its user runs it (torch imported first, the user's environment);
- ``pytorch-channels-last``: the same, model and batch converted to ``torch.channels_last``;
- ``torch-compile`` (opt-in, ``--torch-compile``): the same with ``torch.compile(model)``;
- ``torch-mask <scheme>``: the reference's masked dense training (``mest.train --backend torch-mask``);
- ``tvm <scheme>``: our ``tvm`` backend (compact sparse layers run by the TVM kernels);
- ``compiled <scheme>``: our ``compiled`` backend (the whole step one built TVM function,
  :mod:`mest.compiled`; built once, or loaded from the module cache, in the first step);
- ``import-torch``, ``import-torch-tvm``: processes that only import, for their peak resident set.

Each runs in processes of its own, alternated round by round (:mod:`benchmarks.harness`). Reported:
the step time (median of the process medians, min-max); ``vs dense``, the faster dense PyTorch
layout's median over this one's (above 1: this is faster); ``vs torch-mask`` (same scheme); each
process's peak resident set; the sparse layers' training-state bytes (weights, gradients, momentum,
indices or masks) against the same layers dense; the first step's seconds (the tvm backend builds its
kernels there, the compiled one its step); and for ``tvm`` and ``compiled`` one mutation (EM&S's first phase, and EM) with its re-pack and kernel
rebuild, as a share of one mutation window (``--window-steps`` steps at the median step time).
Writes JSON (``--out``) and prints a markdown table. A benchmark, not a test: figures are the machine's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmarks.harness import (
    CommandParser, Variant, VariantResult, Workload, add_protocol_arguments, at_least, format_ratio, import_only,
    markdown_table, mebibytes, names_of, ratio, run_benchmark, run_command, sparsity,
)
from mest.config import get_preset
from mest.models import MODEL_NAMES, build_model
from mest.mutation import MutationSchedule
from mest.schemes import SCHEMES
from mest.sparsity import SparseState, default_profile
from mest.trainer import train_step

# Only PyTorch and the pure-PyTorch parts of mest are imported at the top: a dense PyTorch worker
# imports this module too. Our TVM side is imported inside the setups of our variants.

#: The preset whose optimizer settings and mutation timing (every 5 epochs, bounds at 90 and 120) are used.
PRESET = "resnet32-cifar10-ems-90"

#: CIFAR-10 training examples (one epoch at batch 64 is 782 steps).
CIFAR_TRAIN_EXAMPLES = 50_000


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _batch(params: dict, memory_format: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = params["image_size"]
    images = torch.randn(params["batch"], 3, size, size, generator=generator)
    return images.contiguous(memory_format=memory_format), torch.randint(0, 10, (params["batch"],), generator=generator)


def _training_state(params: dict, memory_format: torch.memory_format = torch.contiguous_format,
                    scheme: str | None = None, convert: Callable[[torch.nn.Module, SparseState], None] | None = None,
                    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, SparseState | None]:
    """The model (reference init, seed 0), pruned by ``scheme`` when given, converted by ``convert``
    (a backend's, e.g. :func:`mest.compact.to_compact`) before the optimizer is built, and its SGD optimizer."""
    config = get_preset(PRESET).override(model=params["model"], sparsity=params["sparsity"], batch_size=params["batch"])
    torch.manual_seed(config.seed)
    model = build_model(config.model, 10, 3).to(memory_format=memory_format)
    sparse = SparseState.prune_init(model, default_profile(model, config.sparsity), scheme) if scheme else None
    if convert is not None:
        convert(model, sparse)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    return model, optimizer, sparse


def _workload(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sparse: SparseState | None,
              params: dict, memory_format: torch.memory_format = torch.contiguous_format) -> Workload:
    """The timed step; the first one (compiles, kernel builds) is timed apart, and state bytes after it."""
    images, labels = _batch(params, memory_format)

    def step() -> None:
        train_step(model, optimizer, sparse, images, labels)

    info: dict = {"first_step_s": _seconds(step)}
    if sparse is not None:
        info["state_bytes"], info["dense_state_bytes"] = sparse.state_bytes()
    return Workload({"step": step}, info)


# ---- the variants' setups (run in their workers) ----------------------------------------------

def pytorch_nchw(params: dict) -> Workload:
    """Dense PyTorch, NCHW (the default layout)."""
    return _workload(*_training_state(params), params)


def pytorch_channels_last(params: dict) -> Workload:
    """Dense PyTorch with model and batch in ``channels_last``, as PyTorch's performance guide advises."""
    layout = torch.channels_last
    return _workload(*_training_state(params, layout), params, layout)


def pytorch_compiled(params: dict) -> Workload:
    """Dense PyTorch, NCHW, the model wrapped by ``torch.compile`` (compiled in the first step)."""
    model, optimizer, _ = _training_state(params)
    return _workload(torch.compile(model), optimizer, None, params)


def torch_mask(params: dict) -> Workload:
    """The reference's masked dense training (``--backend torch-mask``)."""
    return _workload(*_training_state(params, scheme=params["scheme"]), params)


def _mutation_share(config, model, optimizer, sparse, step: Callable[[], None], rebuild_seconds: Callable[[], float],
                    window_steps: int, refresh: Callable[[], None] = lambda: None) -> Callable[[dict[str, float]], dict]:
    """After the timing: one mutation of EM&S's first phase (layers grow to their largest bound) and one
    of EM, each followed by the first step on the re-packed layers (a rebuild would show there)."""

    def after(medians: dict[str, float]) -> dict:
        mutation = {}
        for kind, epoch in (("ems", 0), ("em", config.update_freq)):
            schedule = MutationSchedule(kind, config.sparsity, config.update_freq, config.decay_epochs)
            builds_before = rebuild_seconds()

            def mutate() -> None:
                sparse.mutate(model, optimizer, schedule, epoch, seed=1)
                refresh()

            mutate_s = _seconds(mutate)
            mutation[kind] = {"mutate_s": mutate_s, "first_step_s": _seconds(step),
                              "rebuild_s": rebuild_seconds() - builds_before}
        window_s = window_steps * medians["step"]
        return {"mutation": mutation, "window_train_s": window_s,
                "mutation_share_of_window": {k: (v["mutate_s"] + v["rebuild_s"]) / window_s for k, v in mutation.items()}}

    return after


def tvm_backend(params: dict) -> Workload:
    """Our ``tvm`` backend, set up as the trainer does (buffers sized for the run's peak, kernels for the batch)."""
    from mest.compact import to_compact  # noqa: PLC0415 - imports TVM: only in this variant's process
    from schedules.cache import default_cache  # noqa: PLC0415

    config = get_preset(PRESET).override(model=params["model"], scheme=params["scheme"], sparsity=params["sparsity"],
                                         batch_size=params["batch"])
    model, optimizer, sparse = _training_state(params, scheme=config.scheme, convert=lambda model, sparse: to_compact(
        model, sparse, capacity=sparse.peak_counts(config.mutation_schedule()), batch_size=config.batch_size))
    workload = _workload(model, optimizer, sparse, params)
    cache = default_cache()
    workload.info.update(build_s=cache.build_seconds, kernel_builds=cache.builds)
    workload.after = _mutation_share(config, model, optimizer, sparse, workload.steps["step"],
                                     lambda: cache.build_seconds, window_steps=params["window_steps"])
    return workload


def compiled_backend(params: dict) -> Workload:
    """Our ``compiled`` backend, set up as the trainer does (one built step, buffers for the run's peak)."""
    from mest.compiled import CompiledTraining, to_compiled  # noqa: PLC0415 - imports TVM: only in this variant's process

    config = get_preset(PRESET).override(model=params["model"], scheme=params["scheme"], sparsity=params["sparsity"],
                                         batch_size=params["batch"])
    model, optimizer, sparse = _training_state(params, scheme=config.scheme, convert=lambda model, sparse: to_compiled(
        model, sparse, capacity=sparse.peak_counts(config.mutation_schedule())))
    size = params["image_size"]
    compiled = CompiledTraining(model, build_model(config.model, 10, 3), sparse, optimizer,
                                model_key=f"{config.model}/10/3/{size}", input_shape=(config.batch_size, 3, size, size))
    images, labels = _batch(params)
    lr = optimizer.param_groups[0]["lr"]

    def step() -> None:
        compiled.step(images, labels, lr)

    info = {"first_step_s": _seconds(step)}
    info["state_bytes"], info["dense_state_bytes"] = sparse.state_bytes()
    info.update(build_s=compiled.build_seconds, module_builds=compiled.builds)
    after = _mutation_share(config, model, optimizer, sparse, step, lambda: compiled.build_seconds,
                            window_steps=params["window_steps"], refresh=compiled.refresh)
    return Workload({"step": step}, info, after)


@dataclass(frozen=True)
class StepVariant:
    """A way to run the training step: its setup, how its process starts, and whether it is per scheme.

    Attributes
    ----------
    setup : callable
        Module-level ``setup(params) -> Workload`` (params: model, sparsity, batch, image_size,
        window_steps, and scheme when ``per_scheme``).
    imports_first : str
        ``"torch"`` (a PyTorch user's process) or ``"mest"`` (ours).
    per_scheme : bool
        One variant per ``--schemes`` entry.
    default : bool
        Run unless ``--variants`` says otherwise.
    params : dict
        More parameters of its setup.
    """

    setup: Callable[[dict], Workload]
    imports_first: str
    per_scheme: bool
    default: bool = True
    params: dict = field(default_factory=dict)


#: Every variant of the step by name. A new backend (e.g. a compiled training step) is one more
#: entry, with its setup function above.
STEP_VARIANTS: dict[str, StepVariant] = {
    "pytorch-nchw": StepVariant(pytorch_nchw, "torch", per_scheme=False),
    "pytorch-channels-last": StepVariant(pytorch_channels_last, "torch", per_scheme=False),
    "torch-compile": StepVariant(pytorch_compiled, "torch", per_scheme=False, default=False),
    "torch-mask": StepVariant(torch_mask, "mest", per_scheme=True),
    "tvm": StepVariant(tvm_backend, "mest", per_scheme=True),
    "compiled": StepVariant(compiled_backend, "mest", per_scheme=True),
    "import-torch": StepVariant(import_only, "torch", per_scheme=False, params={"modules": []}),
    "import-torch-tvm": StepVariant(import_only, "torch", per_scheme=False, params={"modules": ["tvm"]}),
}
DENSE_VARIANTS = ("pytorch-nchw", "pytorch-channels-last")


def build_variants(names: list[str], schemes: list[str], params: dict) -> list[Variant]:
    """The variants to run, in round order: those for all schemes first, then scheme by scheme."""
    chosen = {name: STEP_VARIANTS[name] for name in STEP_VARIANTS if name in names}
    variants = [Variant(name, v.setup, v.imports_first, {**params, **v.params})
                for name, v in chosen.items() if not v.per_scheme]
    for scheme in schemes:
        variants += [Variant(f"{name} {scheme}", v.setup, v.imports_first, {**params, **v.params, "scheme": scheme})
                     for name, v in chosen.items() if v.per_scheme]
    return variants


def table_rows(results: list[VariantResult]) -> list[dict]:
    """One row per variant: times, ratios, memory, state bytes, build and mutation figures."""
    by_name = {r.variant.name: r for r in results}
    dense = [s for s in (by_name[n].summary() for n in DENSE_VARIANTS if n in by_name) if s is not None]
    fastest_dense = min(dense, key=lambda s: s.median_s, default=None)
    rows = []
    for result in results:
        scheme = result.variant.params.get("scheme")
        summary = result.summary()
        mask = by_name.get(f"torch-mask {scheme}")
        rows.append({
            "variant": result.variant.name, "status": "ok" if result.ok else "failed", "error": result.error,
            "step": summary, "vs_dense": ratio(fastest_dense, summary),
            "vs_torch_mask": ratio(mask.summary(), summary) if mask is not None and mask is not result else None,
            "peak_rss_bytes": result.peak_rss_bytes(), "state_bytes": result.fact("state_bytes"),
            "dense_state_bytes": result.fact("dense_state_bytes"), "first_step_s": result.fact("first_step_s"),
            "mutation_share_of_window": result.fact("mutation_share_of_window"),
        })
    return rows


def _cells(row: dict) -> list[str]:
    if row["status"] != "ok":
        return [row["variant"], f"failed: {row['error']}", *["-"] * 6]
    state = (f"{row['state_bytes'] / 1024:.0f} ({row['state_bytes'] / row['dense_state_bytes']:.2f}x)"
             if row["state_bytes"] is not None else "-")
    share = row["mutation_share_of_window"]
    return [
        row["variant"], row["step"].milliseconds() if row["step"] else "-", format_ratio(row["vs_dense"]),
        format_ratio(row["vs_torch_mask"]),
        mebibytes(row["peak_rss_bytes"]), state,
        f"{row['first_step_s']:.2f}" if row["first_step_s"] is not None else "-",
        f"{share['ems'] * 100:.2f}% / {share['em'] * 100:.2f}%" if share else "-",
    ]


HEADER = ["variant", "step ms, median (min-max)", "vs dense", "vs torch-mask", "peak RSS MiB",
          "sparse-layer state KiB (x dense)", "first step s", "mutation + rebuild, EM&S / EM (% of window)"]


def summarise(results: list[VariantResult]) -> tuple[dict, str]:
    """The report's table (JSON) and the printed one."""
    rows = table_rows(results)
    table = [{**row, "step": vars(row["step"]) if row["step"] else None} for row in rows]
    return {"table": table}, markdown_table(HEADER, [_cells(row) for row in rows])


def build_parser() -> CommandParser:
    """The command's arguments."""
    parser = CommandParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", choices=MODEL_NAMES, help="model trained")
    parser.add_argument("--schemes", type=names_of("scheme", list(SCHEMES)), default=",".join(SCHEMES), help="comma-separated sparsity schemes")
    parser.add_argument("--sparsity", type=sparsity, default=0.9, help="sparsity of the sparse layers, in [0, 1)")
    parser.add_argument("--batch", type=at_least(1), default=64, help="images per step")
    parser.add_argument("--image-size", type=at_least(4), default=32, help="image height and width")
    parser.add_argument("--variants", type=names_of("variant", list(STEP_VARIANTS)), default=",".join(n for n, v in STEP_VARIANTS.items() if v.default),
                        help="comma-separated variants, of " + ", ".join(STEP_VARIANTS))
    parser.add_argument("--torch-compile", action="store_true", help="also run the torch-compile variant (slow to compile)")
    parser.add_argument("--window-steps", type=at_least(1), default=-(-CIFAR_TRAIN_EXAMPLES // 64) * 5,
                        help="steps of one mutation window (5 CIFAR-10 epochs at batch 64)")
    add_protocol_arguments(parser, out="runs/benchmarks/train-step.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = build_parser().parse_args(argv)
    names = args.variants + (["torch-compile"] if args.torch_compile and "torch-compile" not in args.variants else [])
    params = {"model": args.model, "sparsity": args.sparsity, "batch": args.batch, "image_size": args.image_size,
              "window_steps": args.window_steps}
    headline = (f"{args.model} training step, batch {args.batch}, {args.image_size}x{args.image_size}, "
                f"sparsity {args.sparsity:g}")
    return run_benchmark("benchmarks.train_step", args, build_variants(names, args.schemes, params), headline, summarise)


if __name__ == "__main__":
    sys.exit(run_command(main))
