"""``python -m mest.train``: train a MEST sparse network from a preset, or resume a run.

Examples
--------
``python -m mest.train`` (the default preset on the bundled digits data),
``python -m mest.train --preset resnet32-cifar10-ems-90 --data-dir ~/cifar-10-batches-py --scheme pattern``,
``python -m mest.train --resume runs/resnet20-digits-ems-90``.

``python -m mest.train --device arm64 --session emulator`` (or ``rpc:HOST:PORT``,
``tracker:HOST:PORT:KEY``) trains on a device: the compiled step is built for its target, loaded there
through a TVM RPC session, and the state stays there (:mod:`mest.compiled`); the device needs only the
TVM runtime. ``--resume DIR --device ...`` continues any checkpoint there; one written on a device
resumes here, and the other way round. Under the emulator, times are no speed.

A run locks its directory for its whole life (:mod:`mest.rundir`): a second ``mest.train`` on the
same ``--out``, or a ``--resume`` of a running run, is refused; so is resuming a finished run.

Under ``torchrun --nproc-per-node N -m mest.train ...`` the run is data-parallel (:mod:`mest.distributed`):
rank 0 holds the lock and writes the run directory, and sends the checkpoint it resumes from to the
other ranks. A group that torchrun restarts (``--max-restarts``, ``TORCHELASTIC_RESTART_COUNT > 0``)
resumes from the checkpoint in ``--out`` when it holds the same configuration, instead of refusing it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

from mest.checkpoint import (CHECKPOINT_NAME, checkpoint_from_bytes, find_checkpoint, read_checkpoint_bytes,
                             resolve_checkpoint_path)
from mest.cli import ArgumentParser, run_main
from mest.config import BACKENDS, DEFAULT_PRESET, PRESETS, TrainConfig, get_preset
from mest.data import DATASET_NAMES
from mest.distributed import DEFAULT_TIMEOUT_S, World, process_group
from mest.errors import CheckpointError, ConfigError
from mest.models import MODEL_NAMES
from mest.rundir import LOCK_NAME, locked_run_dir
from mest.schemes import SCHEMES
from mest.trainer import PLOT_NAME, Trainer, run_summary

#: Flags that override fields of the preset's TrainConfig (flag name = field name), with their help.
OVERRIDES = {
    "model": (str, f"network: {', '.join(MODEL_NAMES)}"),
    "dataset": (str, f"{', '.join(DATASET_NAMES)} (CIFAR needs --data-dir)"),
    "data_dir": (str, "folder of the CIFAR python-pickle batches (data_batch_1 ... test_batch)"),
    "scheme": (str, f"sparsity scheme: {', '.join(SCHEMES)}"),
    "sparsity": (float, "target sparsity of the sparse layers, in [0, 1)"),
    "schedule": (str, "mutation schedule: em (Elastic Mutation) or ems (Soft Memory Bound)"),
    "update_freq": (int, "epochs between mutations, >= 1 (epoch 0 mutates)"),
    "epochs": (int, "epochs to train, >= 1"),
    "batch_size": (int, "training batch, >= 1"),
    "lr": (float, "initial learning rate (cosine to 0), > 0"),
    "momentum": (float, "SGD momentum, in [0, 1)"),
    "weight_decay": (float, "SGD weight decay, >= 0"),
    "grad_weight": (float, "lambda of the mutation's importance |w| + lambda |grad|, >= 0"),
    "remove_epoch": (int, "epoch at which the least-forgotten examples are removed"),
    "remove_count": (int, "examples removed then (0: none; fewer than the training set)"),
    "ranking_in": (str, "forgetting_ranking.json of an earlier run: remove its examples (none: this run's)"),
    "profile": (str, "JSON file {parameter FQN: sparsity} (none: the 3x3 convs of the stages at --sparsity)"),
    "seed": (int, "seed of the init, the shuffle and the mutations"),
    "backend": (str, "tvm (compact layers, TVM kernels), compiled (the whole step one TVM function) or "
                     "torch-mask (masked dense, the reference)"),
}


def _decay_epochs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(e) for e in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs joined by '-', e.g. 90-120, got {text!r}") from None


def _shown(value: object) -> str:
    if value is None:
        return "none"
    return "-".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m mest.train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"named configuration (default {DEFAULT_PRESET})")
    parser.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<preset>[-N])")
    parser.add_argument("--resume", type=Path, help="continue the run in this checkpoint or run directory "
                        "(default: none, a new run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    parser.add_argument("--device", metavar="TARGET",
                        help="train on a device of this target (arm64, armv7, x86, host) with the compiled backend, "
                        "the state resident there: implies --backend compiled, refuses another (default: none, "
                        "this process)")
    parser.add_argument("--session", metavar="KIND",
                        help="how to reach the --device: emulator | rpc:HOST:PORT | tracker:HOST:PORT:KEY | local "
                        "(default: the emulator for arm64 when qemu is installed, local for the host); armv7's "
                        "emulator is a kernel runner (python -m mest.compile --target armv7), it cannot train")
    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="under torchrun: how long a rank waits for the others, at start-up and in every "
                        f"exchange, before it fails (default {DEFAULT_TIMEOUT_S:g})")
    preset = PRESETS[DEFAULT_PRESET]
    overrides = parser.add_argument_group(
        "preset fields", f"each defaults to the --preset's value; the defaults shown are {DEFAULT_PRESET}'s")
    overrides.add_argument("--decay-epochs", type=_decay_epochs,
                           help=f"two epochs where the mutation bounds step (default {_shown(preset.decay_epochs)})")
    for name, (kind, text) in OVERRIDES.items():
        extra = {"choices": BACKENDS} if name == "backend" else {}
        overrides.add_argument(f"--{name.replace('_', '-')}", type=kind,
                               help=f"{text} (default {_shown(getattr(preset, name))})", **extra)
    return parser


def _fresh_out_dir(preset: str) -> Path:
    """``runs/<preset>``, or the first ``runs/<preset>-N`` that holds no run (finished or running)."""
    base = Path("runs") / preset
    candidate, n = base, 1
    while (candidate / CHECKPOINT_NAME).exists() or (candidate / LOCK_NAME).exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print("\n".join(sorted(PRESETS)))
        return 0
    if not args.dist_timeout > 0:
        raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout:g}")
    overrides = {name: getattr(args, name) for name in OVERRIDES}
    if args.decay_epochs is not None:
        overrides["decay_epochs"] = args.decay_epochs
    world = World.from_env()
    device = _device(args, world)
    if device is not None and args.resume is None:
        if args.backend not in (None, "compiled"):
            raise ConfigError(f"--device trains with the compiled backend; drop --backend {args.backend}")
        overrides["backend"] = "compiled"
    config, out_dir = None, None
    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
        if given or args.out is not None:
            raise ConfigError(f"--resume takes its configuration from the checkpoint; drop {' '.join(given or ['--out'])}")
    else:
        config = get_preset(args.preset).override(**overrides)
        if args.out is None and world.max_restarts > 0:
            raise ConfigError("under torchrun --max-restarts give --out DIR, so that a restarted group finds its checkpoint")
        out_dir = args.out if args.out is not None else _fresh_out_dir(args.preset)
    with process_group(world, args.dist_timeout), contextlib.ExitStack() as lock:
        data = world.from_main(lambda: _checkpoint_bytes(args, config, out_dir, world, lock))
        session = None
        if device is not None:
            from devices.sessions import open_session

            session = lock.enter_context(open_session(device[1], device[0]))
        where = f" on {session.describe()}" if session is not None else ""
        if data is not None:
            checkpoint = checkpoint_from_bytes(data, resolve_checkpoint_path(args.resume or out_dir))
            if session is not None and checkpoint.config.backend != "compiled":  # checkpoints are interchangeable
                where += f" (written by the {checkpoint.config.backend} backend, continued compiled)"
                checkpoint = dataclasses.replace(checkpoint, config=checkpoint.config.override(backend="compiled"))
            trainer = Trainer.resume(checkpoint, progress=not args.no_progress, world=world, session=session)
            _say(world, f"resuming {checkpoint.path} at epoch {checkpoint.epoch + 1}/{checkpoint.config.epochs}{where}")
        else:
            trainer = Trainer(config, out_dir, progress=not args.no_progress, world=world, session=session)
            _say(world, f"training {config.model} on {config.dataset}: {config.scheme} sparsity {config.sparsity:g}, "
                 f"schedule {config.schedule}, {config.epochs} epochs -> {out_dir}{where}")
        return _train(trainer, device)


def _device(args: argparse.Namespace, world: World) -> tuple[str, str] | None:
    """``(target, session kind)`` of ``--device`` / ``--session``, checked; None without ``--device``."""
    if args.device is None:
        if args.session is not None:
            raise ConfigError("--session says how to reach a --device; give --device TARGET too")
        return None
    from devices.sessions import default_session_kind
    from devices.targets import get_target

    spec = get_target(args.device)
    if world.size > 1:
        raise ConfigError("--device trains one process on one device; not under torchrun")
    kind = args.session or default_session_kind(spec)
    if kind is None:
        raise ConfigError(f"no session for {spec.name}: install {' '.join(spec.debian_packages)} for the emulator, "
                          "or give --session rpc:HOST:PORT or tracker:HOST:PORT:KEY")
    if kind == "emulator" and spec.emulation == "runner":
        raise ConfigError(f"--device {spec.name} --session emulator cannot train: the {spec.name} emulation is a "
                          "kernel runner, not a Relax VM (no TVM runtime exists for it); its kernels run under "
                          f"python -m mest.compile --target {spec.name}, training needs a {spec.name} board with the "
                          "TVM runtime (--session rpc:HOST:PORT or tracker:HOST:PORT:KEY)")
    return spec.name, kind


def _checkpoint_bytes(args: argparse.Namespace, config: TrainConfig | None, out_dir: Path | None,
                      world: World, lock: contextlib.ExitStack) -> bytes | None:
    """On rank 0: lock the run directory (for as long as ``lock`` lasts), then return the bytes of
    the checkpoint to resume from, or None for a fresh run. A finished run, or a checkpoint that a
    fresh run would overwrite, is refused; a group that torchrun restarted resumes its own run."""
    if args.resume is not None:
        path = find_checkpoint(args.resume)
        lock.enter_context(locked_run_dir(path.parent, create=False))
    else:
        lock.enter_context(locked_run_dir(out_dir))
        path = out_dir / CHECKPOINT_NAME
        if not path.exists():
            return None
        if world.restart == 0:
            raise CheckpointError(f"{out_dir} already holds a checkpoint; pass --resume {out_dir} or another --out")
    data = read_checkpoint_bytes(path)
    checkpoint = checkpoint_from_bytes(data, path)
    if config is not None and checkpoint.config != config:  # a restarted group, and someone else's run
        raise CheckpointError(f"{out_dir} holds a checkpoint of another configuration; torchrun's restart "
                              "cannot resume it (pass --resume, or another --out)")
    if checkpoint.epoch >= checkpoint.config.epochs:
        raise CheckpointError(f"the run in {path.parent} is finished ({checkpoint.epoch} of "
                              f"{checkpoint.config.epochs} epochs): nothing to resume")
    return data


def _say(world: World, line: str) -> None:
    if world.is_main:
        print(line, flush=True)


def _train(trainer: Trainer, device: tuple[str, str] | None = None) -> int:
    """Run the trainer to the end and print the run's summary (on rank 0); ``device`` is the
    ``(target, session kind)`` it trains on, if any."""
    from devices.errors import DeviceError

    try:
        final = trainer.run()
    except DeviceError as err:  # the device died (or timed out): the last checkpoint is whole
        resume = f" --device {device[0]} --session {device[1]}" if device is not None else ""
        hint = (f"the last checkpoint in {trainer.out_dir} is intact: continue with "
                f"python -m mest.train --resume {trainer.out_dir}{resume}"
                if (trainer.out_dir / CHECKPOINT_NAME).exists() else "no checkpoint was written yet: start the run again")
        raise DeviceError(f"{err}; {hint}") from None
    if not trainer.world.is_main:
        return 0
    summary = run_summary(trainer.history)
    print(f"test accuracy {final['test_acc']:.4f} at density {final['density']:.4f} of the sparse layers "
          f"({len(trainer.history)} epochs, {summary['seconds']:.0f} s, backend {trainer.config.backend})")
    print(f"throughput {summary['examples_per_s']:.0f} examples/s (median epoch); sparse-layer training state "
          f"{summary['state_bytes'] / 1024:.0f} KiB = {summary['state_ratio']:.2f}x of dense; mutation + kernel "
          f"builds {summary['mutation_and_build_seconds']:.1f} s = {summary['mutation_and_build_share'] * 100:.1f}% of the run")
    if "device" in final:
        print(_device_summary(final["device"], summary["seconds_per_step"] or 0.0))
    print(f"checkpoint {resolve_checkpoint_path(trainer.out_dir)}, plot {trainer.out_dir / PLOT_NAME}")
    return 0


def _device_summary(device: dict, step_seconds: float) -> str:
    """Lines on what the device held (against a dense compiled step), what crossed per step, and time per step."""
    held, dense = device["resident_bytes"], device["dense_resident_bytes"]
    parts = ", ".join(f"{name} {held[key] / 1024:.0f}" for name, key in (
        ("parameters", "param"), ("momentum", "momentum"), ("BN statistics", "stat"), ("indices", "index"),
        ("batch", "data"), ("VM workspace", "workspace")))
    per_step = device["bytes_per_step"]
    speed = "emulated: a correctness run, its time is no speed" if device["emulated"] else "measured on the device"
    return (f"on the device ({device['session']}): {held['total'] / 1024:.0f} KiB resident ({parts} KiB) against "
            f"{dense['total'] / 1024:.0f} KiB for a dense compiled step ({held['total'] / dense['total']:.2f}x); "
            f"sent {per_step['sent']:.0f} B and received {per_step['received']:.0f} B per step\n"
            f"time per step {step_seconds * 1e3:.1f} ms ({speed})")


if __name__ == "__main__":
    sys.exit(run_main(main))
