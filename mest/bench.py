"""``python -m mest.bench``: a MEST training step on the TVM kernels against dense PyTorch, one process.

For each scheme: a ResNet (ResNet-32 for CIFAR by default) training step (forward, backward, SGD
update) at batch 64 and 90% sparsity, timed for the ``tvm`` backend, dense PyTorch and the reference's
``torch-mask``, interleaved round by round on the same input, median of the rounds. Also the bytes of
training state of the sparse layers (weights, gradients, momentum, indices or masks) against dense,
and the cost of one mutation + kernel rebuild against the training time of one mutation window.
Writes JSON and prints the ratios. It is a benchmark, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mest.cli import run_main
from mest.compact import to_compact
from mest.io import atomic_write_text
from mest.models import MODEL_NAMES, build_model
from mest.mutation import MutationSchedule
from mest.schemes import SCHEMES
from mest.sparsity import SparseState, default_profile


class Variant:
    """A model, its optimizer and (for sparse variants) its sparse state, stepping on one batch."""

    def __init__(self, model: torch.nn.Module, sparse: SparseState | None) -> None:
        self.model = model
        self.sparse = sparse
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.sparse is not None:
            self.sparse.apply_to_grads()
        self.optimizer.step()
        if self.sparse is not None:
            self.sparse.apply_to_weights()
        return time.perf_counter() - start


def build_variants(model_name: str, scheme: str, sparsity: float, in_channels: int, batch: int) -> dict[str, Variant]:
    """Dense, masked and compact copies of one random-init model (buffers sized as the trainer does
    for an EM&S run: for its largest upper bound)."""
    torch.manual_seed(0)
    dense = build_model(model_name, 10, in_channels)
    masked_model = copy.deepcopy(dense)
    masked = Variant(masked_model, SparseState.prune_init(masked_model, default_profile(masked_model, sparsity), scheme))
    tvm_model = copy.deepcopy(masked_model)
    tvm_sparse = SparseState.from_masks(tvm_model, masked.sparse.masks, masked.sparse.schemes, masked.sparse.sparsity)
    peaks = tvm_sparse.peak_counts(MutationSchedule("ems", sparsity, update_freq=5, decay_epochs=(90, 120)))
    to_compact(tvm_model, tvm_sparse, capacity=peaks, batch_size=batch)  # before the Variant's optimizer
    tvm = Variant(tvm_model, tvm_sparse)
    return {"pytorch-dense": Variant(dense, None), "torch-mask": masked, "tvm": tvm}


def bench_scheme(args: argparse.Namespace, scheme: str) -> dict:
    from schedules.cache import default_cache

    variants = build_variants(args.model, scheme, args.sparsity, 3, args.batch)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch,))
    cache = default_cache()
    builds_before = cache.build_seconds
    for variant in variants.values():
        for _ in range(args.warmup):
            variant.step(images, labels)
    first_build = cache.build_seconds - builds_before
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            times[name].append(variant.step(images, labels))
    median = {name: statistics.median(t) for name, t in times.items()}
    tvm = variants["tvm"]
    held, dense_bytes = tvm.sparse.state_bytes()
    masked_held, _ = variants["torch-mask"].sparse.state_bytes()

    # One mutation of the first phase of EM&S (the layer grows to its largest bound) and one of EM,
    # each followed by the first step on the re-packed layers (a rebuild would show here).
    mutation = {}
    for kind in ("ems", "em"):
        schedule = MutationSchedule(kind, args.sparsity, update_freq=5, decay_epochs=(90, 120))
        builds_before = cache.build_seconds
        start = time.perf_counter()
        tvm.sparse.mutate(tvm.model, tvm.optimizer, schedule, epoch=0 if kind == "ems" else 5, seed=1)
        mutate_seconds = time.perf_counter() - start
        step_seconds = tvm.step(images, labels)
        mutation[kind] = {"mutate_s": mutate_seconds, "rebuild_s": cache.build_seconds - builds_before,
                          "first_step_s": step_seconds}
    window_seconds = args.window_steps * median["tvm"]
    return {
        "scheme": scheme, "median_step_s": median, "all_step_s": times,
        "speedup_vs_dense": median["pytorch-dense"] / median["tvm"],
        "speedup_vs_torch_mask": median["torch-mask"] / median["tvm"],
        "sparse_state_bytes": {"tvm": held, "torch-mask": masked_held, "dense": dense_bytes},
        "state_ratio_vs_dense": held / dense_bytes,
        "first_build_s": first_build, "mutation": mutation,
        "window_steps": args.window_steps, "window_train_s": window_seconds,
        "mutation_share_of_window": {k: (v["mutate_s"] + v["rebuild_s"]) / window_seconds for k, v in mutation.items()},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mest.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32", choices=MODEL_NAMES)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--window-steps", type=int, default=5 * 782,
                        help="steps of one mutation window (default: 5 CIFAR epochs at batch 64)")
    parser.add_argument("--out", type=Path, default=Path("bench-train-step.json"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
               "args": {k: str(v) for k, v in vars(args).items()}, "schemes": []}
    print(f"{args.model} training step, batch {args.batch}, {args.image_size}x{args.image_size}, "
          f"sparsity {args.sparsity:g}; median of {args.rounds} interleaved steps")
    print(f"{'scheme':10} {'dense ms':>9} {'mask ms':>8} {'tvm ms':>7} {'vs dense':>9} {'vs mask':>8} "
          f"{'state':>6} {'mut+rebuild EM&S / EM (% window)':>33}")
    for scheme in args.schemes:
        r = bench_scheme(args, scheme)
        results["schemes"].append(r)
        m, share = r["median_step_s"], r["mutation_share_of_window"]
        print(f"{scheme:10} {m['pytorch-dense'] * 1e3:9.1f} {m['torch-mask'] * 1e3:8.1f} {m['tvm'] * 1e3:7.1f} "
              f"{r['speedup_vs_dense']:8.2f}x {r['speedup_vs_torch_mask']:7.2f}x {r['state_ratio_vs_dense']:5.2f}x "
              f"{share['ems'] * 100:15.2f}% / {share['em'] * 100:.2f}%")
        atomic_write_text(args.out, json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
