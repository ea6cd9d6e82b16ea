"""The MEST training loop: sparse from the first step to the last, resumable bit for bit.

Per run: build the model (reference init), prune it once to the profile's densities; then per epoch:
remove the unforgettable examples at the removal epoch, mutate the sparse layers at a mutation epoch,
train (forward, loss, backward, ``grad *= mask``, SGD step, ``weight *= mask``; forgetting statistics
from the same forward pass; with the ``compiled`` backend the whole step is one built TVM function,
:mod:`mest.compiled`, on the host or on a device through a session), step the cosine LR, evaluate, write
metrics and an atomic checkpoint.
"""

from __future__ import annotations

import json
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from devices.files import atomic_write_text, remove_stale_temporaries
from mest.checkpoint import CHECKPOINT_NAME, Checkpoint, ModelSpec, save_checkpoint
from mest.config import TrainConfig
from mest.data import Dataset, Split, load_dataset, shard, test_batches, train_batches
from mest.distributed import World
from mest.errors import CheckpointError, ConfigError
from mest.forgetting import (ForgettingStats, check_ranking, check_remove_count, read_ranking, save_ranking,
                             unforgettable)
from mest.models import build_model
from mest.sparsity import SparseState, check_profile, default_profile, read_profile

if TYPE_CHECKING:
    from devices.sessions import Session

METRICS_NAME = "metrics.jsonl"
RANKING_NAME = "forgetting_ranking.json"
PLOT_NAME = "training.png"


#: What restoring a state dict of the wrong shape or kind raises.
RESTORE_ERRORS = (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError)


def _unrestorable(checkpoint: Checkpoint, err: Exception) -> CheckpointError:
    """The one-line error of a checkpoint whose payload does not fit this run."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return CheckpointError(f"checkpoint {checkpoint.path} cannot be restored: {reason}")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's shuffle and augmentation, derived from ``(seed, epoch)``."""
    return torch.Generator().manual_seed(zlib.crc32(f"data:{seed}:{epoch}".encode()))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, sparse: SparseState | None,
               images: torch.Tensor, labels: torch.Tensor,
               loss_divisor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: forward, cross-entropy, backward, ``grad *= mask``, SGD step, ``weight *= mask``.

    The trainer's step, and the one ``benchmarks.train_step`` times. ``sparse`` None is dense training.

    Parameters
    ----------
    loss_divisor : float, optional
        What the summed cross-entropy is divided by before backward: the batch size (the default,
        the mean loss), or under data parallelism the whole batch's examples per rank.

    Returns
    -------
    tuple of torch.Tensor
        The logits and the summed (not averaged) loss of the batch, detached.
    """
    logits = model(images)
    summed = F.cross_entropy(logits, labels, reduction="sum")
    loss = summed / (loss_divisor if loss_divisor is not None else len(labels))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sparse is not None:
        sparse.apply_to_grads()
    optimizer.step()
    if sparse is not None:
        sparse.apply_to_weights()
    return logits.detach(), summed.detach()


class Trainer:
    """One MEST run in ``out_dir``: fresh from a config, or resumed from a checkpoint.

    Parameters
    ----------
    config : TrainConfig
        The run's configuration.
    out_dir : Path
        Where checkpoint, metrics, ranking and plot go.
    dataset : Dataset, optional
        Preloaded data (tests); loaded from the config otherwise.
    progress : bool
        Show a progress bar (on rank 0).
    checkpoint : Checkpoint, optional
        Resume from it (see :meth:`resume`).
    world : World, optional
        The ranks under torchrun (:mod:`mest.distributed`); one process by default.
    session : devices.sessions.Session, optional
        Train on this device (the ``compiled`` backend, its state resident there; :mod:`mest.compiled`);
        this process by default.
    """

    def __init__(self, config: TrainConfig, out_dir: Path, dataset: Dataset | None = None,
                 progress: bool = True, checkpoint: Checkpoint | None = None, world: World | None = None,
                 session: Session | None = None) -> None:
        if session is not None and config.backend != "compiled":
            raise ConfigError(f"training on a device runs the compiled backend, not {config.backend}")
        self.config = config
        self.out_dir = Path(out_dir)
        self.world = world if world is not None else World()
        self.world.check_config(config.backend, config.batch_size)
        self.progress = progress and self.world.is_main
        # The files a config names are read before the data, so a bad one costs no data loading.
        ranking = read_ranking(Path(config.ranking_in)) if config.ranking_in else None
        profile = read_profile(Path(config.profile)) if config.profile else None
        if config.backend in ("tvm", "compiled") and profile is not None:  # a layer the backend cannot hold fails before the data loads
            from mest.compact import check_compact_layers

            check_compact_layers(config.model, profile, Path(config.profile), config.scheme)
        self.data = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir)
        if config.removes_examples():
            check_remove_count(config.remove_count, len(self.data.train))
        if config.batch_size > len(self.data.train):
            raise ConfigError(f"batch_size {config.batch_size} is larger than the training set "
                              f"({len(self.data.train)} examples)")
        self.world.check_epochs(config.batch_size, [len(self.data.train)] + (
            [len(self.data.train) - config.remove_count] if config.removes_examples() else []))
        self.spec = ModelSpec(config.model, self.data.num_classes, self.data.in_channels, self.data.image_size)
        self.schedule = config.mutation_schedule()
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, self.spec.num_classes, self.spec.in_channels)
        profile = (check_profile(profile, self.model, Path(config.profile)) if profile is not None
                   else default_profile(self.model, config.sparsity))
        self.sparse = SparseState.prune_init(self.model, profile, config.scheme)
        if checkpoint is not None:
            self._restore_model(checkpoint)
        # Before the optimizer: compact values take the dense weights' slots.
        if config.backend == "tvm":
            from mest.compact import to_compact

            to_compact(self.model, self.sparse, capacity=self.sparse.peak_counts(self.schedule),
                       batch_size=self.world.local_batch(config.batch_size))
        elif config.backend == "compiled":
            from mest.compiled import to_compiled  # imports TVM (seconds): only when this backend runs

            to_compiled(self.model, self.sparse, capacity=self.sparse.peak_counts(self.schedule))
        self.world.prepare(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.forgetting = ForgettingStats.empty(len(self.data.train))
        self.kept_examples = torch.arange(len(self.data.train))
        self.history: list[dict] = []
        self.epoch = 0
        self.ranking_in = (check_ranking(ranking, len(self.data.train), Path(config.ranking_in))
                           if ranking is not None else None)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.step_model = self.world.wrap(self.model)  # the model under DDP (itself for one process)
        self._shapes = {name: p.shape for name, p in self.model.named_parameters()}
        self.compiled = None
        if config.backend == "compiled":
            from mest.compiled import CompiledTraining

            spec = self.spec
            self.compiled = CompiledTraining(
                self.model, build_model(config.model, spec.num_classes, spec.in_channels), self.sparse, self.optimizer,
                model_key=f"{spec.name}/{spec.num_classes}/{spec.in_channels}/{spec.image_size}",
                input_shape=(config.batch_size, spec.in_channels, spec.image_size, spec.image_size),
                progress=tqdm.write if self.progress else None, session=session)

    @classmethod
    def resume(cls, checkpoint: Checkpoint, dataset: Dataset | None = None, progress: bool = True,
               world: World | None = None, session: Session | None = None) -> "Trainer":
        """A trainer in the state a checkpoint recorded, writing into the checkpoint's directory."""
        return cls(checkpoint.config, checkpoint.path.parent, dataset=dataset, progress=progress,
                   checkpoint=checkpoint, world=world, session=session)

    def _restore_model(self, checkpoint: Checkpoint) -> None:
        if self.spec != checkpoint.model_spec:
            raise CheckpointError(f"checkpoint {checkpoint.path} was trained on other data ({checkpoint.model_spec})")
        try:
            self.model.load_state_dict(checkpoint.state["model"])
            self.sparse = SparseState.from_state_dict(self.model, checkpoint.state["sparse"])
        except RESTORE_ERRORS as err:
            raise _unrestorable(checkpoint, err) from None

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        try:
            optimizer_state = state["optimizer"]
            if self.config.backend in ("tvm", "compiled"):
                from mest.compact import compact_optimizer_state

                optimizer_state = compact_optimizer_state(optimizer_state, self.sparse, self.optimizer)
            self.optimizer.load_state_dict(optimizer_state)
            self.scheduler.load_state_dict(state["scheduler"])
            self.forgetting = ForgettingStats.from_state_dict(state["forgetting"])
            self.kept_examples = state["kept_examples"].long()
            self.history = list(state["history"])
            torch.set_rng_state(state["rng"]["torch"])
        except RESTORE_ERRORS as err:
            raise _unrestorable(checkpoint, err) from None
        examples, kept = len(self.data.train), self.kept_examples
        kept_fits = (kept.ndim == 1 and len(kept) > 0 and len(kept.unique()) == len(kept)
                     and 0 <= int(kept.min()) and int(kept.max()) < examples)
        if not kept_fits or any(t.shape != (examples,) for t in self.forgetting.state_dict().values()):
            raise CheckpointError(f"checkpoint {checkpoint.path} cannot be restored: its examples are not those of "
                                  f"this training set ({examples})")
        if len(self.history) != checkpoint.epoch or not all(isinstance(m, dict) for m in self.history):
            raise CheckpointError(f"checkpoint {checkpoint.path} cannot be restored: its history is not one entry per epoch")
        self.epoch = checkpoint.epoch

    # -- one run ---------------------------------------------------------------------------
    def run(self) -> dict:
        """Train the remaining epochs (after :meth:`tidy_run_dir`); return the last epoch's metrics."""
        if self.world.is_main:
            self.tidy_run_dir()
        while self.epoch < self.config.epochs:
            self.run_epoch()
        if self.world.is_main:
            self.write_plot()
        return self.history[-1]

    def tidy_run_dir(self) -> None:
        """Undo what a kill left: temporaries of dead writers go, metrics agree with the checkpoint.

        The metrics file is written just before the checkpoint, so after a kill it may hold one epoch
        more; it is rewritten from the history (the checkpoint's, on a resume), which is the truth.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        self.write_metrics()

    def run_epoch(self) -> dict:
        """Removal, mutation, one pass over the kept examples, evaluation, metrics, checkpoint."""
        epoch, config = self.epoch, self.config
        started = time.perf_counter()
        builds_before = self._kernel_build_seconds()
        if config.remove_epoch is not None and epoch == config.remove_epoch and config.remove_count:
            self.remove_unforgettable()
        mutation = None
        if self.schedule.is_mutation_epoch(epoch):
            t0 = time.perf_counter()
            if self.compiled is not None:
                self.compiled.pull()  # from the device: the sparse layers' values, momentum, gradients
            records = self.sparse.mutate(self.model, self.optimizer, self.schedule, epoch, config.seed,
                                         config.grad_weight)
            if self.compiled is not None:
                self.compiled.refresh()  # new index inputs; a new module only if a capacity changed
            self.world.check_shapes(self.model, self._shapes)
            checked = time.perf_counter()
            digest = self.world.check_same_masks(self.sparse.masks, epoch)
            mutation = {"seconds": time.perf_counter() - t0,
                        "pruned": sum(r.pruned for r in records.values()),
                        "grown": sum(r.grown for r in records.values()),
                        "mask_digest": digest, "mask_check_seconds": time.perf_counter() - checked}
        train_started = time.perf_counter()
        train_loss, train_acc = self.train_one_epoch()
        train_seconds = time.perf_counter() - train_started
        with warnings.catch_warnings():  # the compiled step updates the parameters, not optimizer.step()
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        test_loss, test_acc = evaluate(self.compiled.evaluate if self.compiled is not None else self.model,
                                       self.data, self.world.local_batch(config.batch_size), self.world)
        held, dense = self.sparse.state_bytes()
        metrics = {
            "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
            "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "examples": len(self.kept_examples), "ranks": self.world.size, "density": self.sparse.overall_density(),
            "layer_density": self.sparse.densities(), "mutation": mutation,
            "train_seconds": train_seconds, "examples_per_s": len(self.kept_examples) / train_seconds,
            "train_steps": -(-len(self.kept_examples) // config.batch_size),
            "kernel_build_seconds": self._kernel_build_seconds() - builds_before,
            "state_bytes": {"sparse_layers": held, "dense_equivalent": dense},
            "seconds": time.perf_counter() - started,
        }
        if self.compiled is not None and self.compiled.session is not None:
            metrics["device"] = self.compiled.device_metrics()
        self.history.append(metrics)
        self.epoch += 1
        if self.world.is_main:
            self.write_metrics()
            self.save()
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.3f} train acc {train_acc:.3f} "
                       f"test acc {test_acc:.3f} density {metrics['density']:.3f}")
        return metrics

    def _kernel_build_seconds(self) -> float:
        """Seconds spent building (or loading from disk) TVM kernels or compiled steps so far in this
        process (0 for torch-mask)."""
        if self.compiled is not None:
            return self.compiled.build_seconds
        if self.config.backend != "tvm":
            return 0.0
        from schedules.cache import default_cache

        return default_cache().seconds

    def train_one_epoch(self) -> tuple[float, float]:
        """One pass over the kept examples (this rank's share of each batch); returns the mean loss
        and accuracy over all ranks, and records every example's outcome for the forgetting statistics."""
        self.model.train()
        generator = epoch_generator(self.config.seed, self.epoch)
        batches = train_batches(self.data, self.kept_examples, self.config.batch_size, generator,
                                self.world.rank, self.world.size)
        steps = -(-len(self.kept_examples) // self.config.batch_size)
        bar = tqdm(batches, total=steps, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   leave=False, disable=not self.progress)
        loss_sum, correct_sum, seen = 0.0, 0, 0
        outcomes = []
        for indices, images, labels, examples in bar:
            if self.compiled is not None:  # one process (torchrun refuses this backend)
                loss, correct = self.compiled.step(images, labels, self.optimizer.param_groups[0]["lr"])
                loss_sum += loss * len(labels)
            else:
                # This rank's loss is summed over its examples and divided by the batch's share per rank:
                # DDP's mean over the ranks is then the gradient of the whole batch's mean loss.
                logits, summed = train_step(self.step_model, self.optimizer, self.sparse, images, labels,
                                            loss_divisor=examples / self.world.size)
                correct = logits.detach().argmax(dim=1) == labels
                loss_sum += summed.item()
            outcomes.append((indices, correct))
            correct_sum += int(correct.sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct_sum / seen:.3f}",
                            density=f"{self.sparse.overall_density():.3f}")
        indices, correct = self.world.combine_outcomes(torch.cat([i for i, _ in outcomes]),
                                                       torch.cat([c for _, c in outcomes]), len(self.data.train))
        self.forgetting.update(indices, correct)  # each example is presented once an epoch: order is moot
        loss_sum, correct_sum, seen = self.world.sum([loss_sum, correct_sum, seen])
        return loss_sum / seen, correct_sum / seen

    def remove_unforgettable(self) -> None:
        """Drop the ``remove_count`` least-forgotten examples (from the loaded ranking if given)."""
        ranking = self.ranking_in if self.ranking_in is not None else self.forgetting.ranking()
        if self.world.is_main:
            save_ranking(self.out_dir / RANKING_NAME, ranking, self.forgetting.events)
        removed = unforgettable(ranking, self.config.remove_count)
        keep = torch.ones(len(self.data.train), dtype=torch.bool)
        keep[removed] = False
        self.kept_examples = self.kept_examples[keep[self.kept_examples]]

    # -- outputs ---------------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint payload (plain types and tensors), the same for every backend."""
        if self.compiled is not None:
            self.compiled.pull()  # from the device, if the state lives there
        if self.config.backend in ("tvm", "compiled"):
            from mest.compact import dense_equivalent_state

            model_state, optimizer_state = dense_equivalent_state(self.model, self.sparse, self.optimizer)
        else:
            model_state, optimizer_state = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "config": self.config.to_dict(), "model_spec": asdict(self.spec), "epoch": self.epoch,
            "model": model_state, "sparse": self.sparse.state_dict(),
            "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
            "forgetting": self.forgetting.state_dict(), "kept_examples": self.kept_examples,
            "history": self.history, "rng": {"torch": torch.get_rng_state()},
        }

    def save(self) -> None:
        """Atomically write the checkpoint."""
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, self.state())

    def write_metrics(self) -> None:
        """Rewrite the metrics JSONL from the history (atomic, so a resume never duplicates lines)."""
        atomic_write_text(self.out_dir / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in self.history))

    def write_plot(self) -> Path:
        """PNG of accuracy and per-layer density over epochs."""
        from mest.report import plot_history

        return plot_history(self.history, self.out_dir / PLOT_NAME)


def run_summary(history: list[dict]) -> dict:
    """Throughput, training-state bytes and mutation + kernel-build share of a run's history."""
    steady = history[1:] or history
    total = sum(m["seconds"] for m in history)
    overhead = sum((m["mutation"] or {}).get("seconds", 0.0) + m.get("kernel_build_seconds", 0.0) for m in history)
    state = history[-1]["state_bytes"]
    return {
        "examples_per_s": sorted(m["examples_per_s"] for m in steady)[len(steady) // 2],
        "seconds_per_step": _median([m["train_seconds"] / m["train_steps"] for m in steady if "train_steps" in m]),
        "state_bytes": state["sparse_layers"], "dense_state_bytes": state["dense_equivalent"],
        "state_ratio": state["sparse_layers"] / state["dense_equivalent"],
        "mutation_and_build_seconds": overhead, "mutation_and_build_share": overhead / total if total else 0.0,
        "seconds": total,
    }


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


@torch.no_grad()
def evaluate(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], data: Dataset, batch_size: int,
             world: World | None = None) -> tuple[float, float]:
    """Mean loss and accuracy on the test split, in eval mode (each rank of ``world`` evaluates its
    :func:`~mest.data.shard` of the split, and the sums are reduced).

    ``model`` is a module, or a function giving the eval-mode logits of a batch (the compiled backend's).
    """
    if isinstance(model, nn.Module):
        model.eval()
    world = world if world is not None else World()
    part = shard(len(data.test), world.rank, world.size)
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in test_batches(Split(data.test.images[part], data.test.labels[part]), batch_size):
        logits = model(images)  # at the training batch (of a rank): the same kernels
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
    loss_sum, correct, seen = world.sum([loss_sum, correct, seen])
    if seen == 0:
        raise ConfigError("the test split is empty")
    return loss_sum / seen, correct / seen
