"""``python -m mest.train``: train a MEST sparse network from a preset, or resume a run.

Examples
--------
``python -m mest.train`` (the default preset on the bundled digits data),
``python -m mest.train --preset resnet32-cifar10-ems-90 --data-dir ~/cifar-10-batches-py --scheme pattern``,
``python -m mest.train --resume runs/resnet20-digits-ems-90``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mest.checkpoint import CHECKPOINT_NAME, load_checkpoint, resolve_checkpoint_path
from mest.cli import run_main
from mest.config import BACKENDS, DEFAULT_PRESET, PRESETS, get_preset
from mest.errors import CheckpointError, ConfigError
from mest.trainer import PLOT_NAME, Trainer, run_summary

#: Flags that override fields of the preset's TrainConfig (flag name = field name).
OVERRIDES = {
    "model": str, "dataset": str, "data_dir": str, "scheme": str, "sparsity": float, "schedule": str,
    "update_freq": int, "epochs": int, "batch_size": int, "lr": float, "grad_weight": float,
    "remove_epoch": int, "remove_count": int, "ranking_in": str, "profile": str, "seed": int,
    "backend": str,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mest.train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"named configuration (default {DEFAULT_PRESET})")
    parser.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<preset>[-N])")
    parser.add_argument("--resume", type=Path, help="continue the run in this checkpoint or run directory")
    parser.add_argument("--decay-epochs", type=lambda s: tuple(int(e) for e in s.split("-")),
                        help="epochs where the mutation bounds step, e.g. 90-120")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, kind in OVERRIDES.items():
        extra = {"choices": BACKENDS} if name == "backend" else {}
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, **extra)
    return parser


def _fresh_out_dir(preset: str) -> Path:
    base = Path("runs") / preset
    candidate, n = base, 1
    while (candidate / CHECKPOINT_NAME).exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print("\n".join(sorted(PRESETS)))
        return 0
    overrides = {name: getattr(args, name) for name in OVERRIDES}
    if args.decay_epochs is not None:
        overrides["decay_epochs"] = args.decay_epochs
    progress = not args.no_progress
    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
        if given or args.out is not None:
            raise ConfigError(f"--resume takes its configuration from the checkpoint; drop {' '.join(given or ['--out'])}")
        checkpoint = load_checkpoint(args.resume)
        trainer = Trainer.resume(checkpoint, progress=progress)
        print(f"resuming {checkpoint.path} at epoch {checkpoint.epoch + 1}/{checkpoint.config.epochs}")
    else:
        config = get_preset(args.preset).override(**overrides)
        out_dir = args.out if args.out is not None else _fresh_out_dir(args.preset)
        if (out_dir / CHECKPOINT_NAME).exists():
            raise CheckpointError(f"{out_dir} already holds a checkpoint; pass --resume {out_dir} or another --out")
        trainer = Trainer(config, out_dir, progress=progress)
        print(f"training {config.model} on {config.dataset}: {config.scheme} sparsity {config.sparsity:g}, "
              f"schedule {config.schedule}, {config.epochs} epochs -> {out_dir}")
    final = trainer.run()
    summary = run_summary(trainer.history)
    print(f"test accuracy {final['test_acc']:.4f} at density {final['density']:.4f} of the sparse layers "
          f"({len(trainer.history)} epochs, {summary['seconds']:.0f} s, backend {trainer.config.backend})")
    print(f"throughput {summary['examples_per_s']:.0f} examples/s (median epoch); sparse-layer training state "
          f"{summary['state_bytes'] / 1024:.0f} KiB = {summary['state_ratio']:.2f}x of dense; mutation + kernel "
          f"builds {summary['mutation_and_build_seconds']:.1f} s = {summary['mutation_and_build_share'] * 100:.1f}% of the run")
    print(f"checkpoint {resolve_checkpoint_path(trainer.out_dir)}, plot {trainer.out_dir / PLOT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
