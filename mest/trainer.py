"""The MEST training loop: sparse from the first step to the last, resumable bit for bit.

Per run: build the model (reference init), prune it once to the profile's densities; then per epoch:
remove the unforgettable examples at the removal epoch, mutate the sparse layers at a mutation epoch,
train (forward, loss, backward, ``grad *= mask``, SGD step, ``weight *= mask``; forgetting statistics
from the same forward pass; with the ``compiled`` backend the whole step is one built TVM function,
:mod:`mest.compiled`), step the cosine LR, evaluate, write metrics and an atomic checkpoint.
"""

from __future__ import annotations

import json
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mest.checkpoint import CHECKPOINT_NAME, Checkpoint, ModelSpec, save_checkpoint
from mest.config import TrainConfig
from mest.data import Dataset, load_dataset, test_batches, train_batches
from mest.errors import CheckpointError, ConfigError
from mest.forgetting import ForgettingStats, load_ranking, save_ranking, unforgettable
from mest.io import atomic_write_text
from mest.models import build_model
from mest.sparsity import SparseState, default_profile, load_profile

METRICS_NAME = "metrics.jsonl"
RANKING_NAME = "forgetting_ranking.json"
PLOT_NAME = "training.png"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's shuffle and augmentation, derived from ``(seed, epoch)``."""
    return torch.Generator().manual_seed(zlib.crc32(f"data:{seed}:{epoch}".encode()))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, sparse: SparseState | None,
               images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: forward, cross-entropy, backward, ``grad *= mask``, SGD step, ``weight *= mask``.

    The trainer's step, and the one ``benchmarks.train_step`` times. ``sparse`` None is dense training.

    Returns
    -------
    tuple of torch.Tensor
        The logits and the (mean) loss of the batch.
    """
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sparse is not None:
        sparse.apply_to_grads()
    optimizer.step()
    if sparse is not None:
        sparse.apply_to_weights()
    return logits, loss


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
        Show a progress bar.
    """

    def __init__(self, config: TrainConfig, out_dir: Path, dataset: Dataset | None = None,
                 progress: bool = True, checkpoint: Checkpoint | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.data = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir)
        self.spec = ModelSpec(config.model, self.data.num_classes, self.data.in_channels, self.data.image_size)
        self.schedule = config.mutation_schedule()
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, self.spec.num_classes, self.spec.in_channels)
        profile = (load_profile(Path(config.profile), self.model) if config.profile
                   else default_profile(self.model, config.sparsity))
        self.sparse = SparseState.prune_init(self.model, profile, config.scheme)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.forgetting = ForgettingStats.empty(len(self.data.train))
        self.kept_examples = torch.arange(len(self.data.train))
        self.history: list[dict] = []
        self.epoch = 0
        self.ranking_in = (load_ranking(Path(config.ranking_in), len(self.data.train))
                           if config.ranking_in else None)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.compiled = None
        if config.backend == "tvm":
            from mest.compact import to_compact

            to_compact(self.model, self.sparse, self.optimizer, capacity=self.sparse.peak_counts(self.schedule),
                       batch_size=config.batch_size)
        elif config.backend == "compiled":
            from mest.compiled import CompiledTraining  # imports TVM (seconds): only when this backend runs

            spec = self.spec
            self.compiled = CompiledTraining(
                self.model, build_model(config.model, spec.num_classes, spec.in_channels), self.sparse, self.optimizer,
                model_key=f"{spec.name}/{spec.num_classes}/{spec.in_channels}/{spec.image_size}",
                input_shape=(config.batch_size, spec.in_channels, spec.image_size, spec.image_size),
                capacity=self.sparse.peak_counts(self.schedule), progress=tqdm.write if progress else None)

    @classmethod
    def resume(cls, checkpoint: Checkpoint, dataset: Dataset | None = None, progress: bool = True) -> "Trainer":
        """A trainer in the state a checkpoint recorded, writing into the checkpoint's directory."""
        return cls(checkpoint.config, checkpoint.path.parent, dataset=dataset, progress=progress,
                   checkpoint=checkpoint)

    def _restore(self, checkpoint: Checkpoint) -> None:
        if self.spec != checkpoint.model_spec:
            raise CheckpointError(f"checkpoint {checkpoint.path} was trained on other data ({checkpoint.model_spec})")
        state = checkpoint.state
        try:
            self.model.load_state_dict(state["model"])
            self.sparse = SparseState.from_state_dict(self.model, state["sparse"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.forgetting = ForgettingStats.from_state_dict(state["forgetting"])
            self.kept_examples = state["kept_examples"].long()
            self.history = list(state["history"])
            torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {checkpoint.path} cannot be restored: {str(err).splitlines()[0]}") from None
        self.epoch = checkpoint.epoch

    # -- one run ---------------------------------------------------------------------------
    def run(self) -> dict:
        """Train the remaining epochs; return the last epoch's metrics."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.config.epochs:
            self.run_epoch()
        self.write_plot()
        return self.history[-1]

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
            records = self.sparse.mutate(self.model, self.optimizer, self.schedule, epoch, config.seed,
                                         config.grad_weight)
            if self.compiled is not None:
                self.compiled.refresh()  # new index inputs; a new module only if a capacity changed
            mutation = {"seconds": time.perf_counter() - t0,
                        "pruned": sum(r.pruned for r in records.values()),
                        "grown": sum(r.grown for r in records.values())}
        train_started = time.perf_counter()
        train_loss, train_acc = self.train_one_epoch()
        train_seconds = time.perf_counter() - train_started
        with warnings.catch_warnings():  # the compiled step updates the parameters, not optimizer.step()
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        test_loss, test_acc = evaluate(self.compiled.evaluate if self.compiled is not None else self.model,
                                       self.data, config.batch_size)
        held, dense = self.sparse.state_bytes()
        metrics = {
            "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
            "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "examples": len(self.kept_examples), "density": self.sparse.overall_density(),
            "layer_density": self.sparse.densities(), "mutation": mutation,
            "train_seconds": train_seconds, "examples_per_s": len(self.kept_examples) / train_seconds,
            "kernel_build_seconds": self._kernel_build_seconds() - builds_before,
            "state_bytes": {"sparse_layers": held, "dense_equivalent": dense},
            "seconds": time.perf_counter() - started,
        }
        self.history.append(metrics)
        self.epoch += 1
        self.write_metrics()
        self.save()
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.3f} train acc {train_acc:.3f} "
                       f"test acc {test_acc:.3f} density {metrics['density']:.3f}")
        return metrics

    def _kernel_build_seconds(self) -> float:
        """Seconds spent building TVM kernels (or building and loading compiled steps) so far in this
        process (0 for torch-mask)."""
        if self.compiled is not None:
            return self.compiled.build_seconds
        if self.config.backend != "tvm":
            return 0.0
        from schedules.cache import default_cache

        return default_cache().build_seconds

    def train_one_epoch(self) -> tuple[float, float]:
        """One pass over the kept examples; returns mean loss and accuracy."""
        self.model.train()
        generator = epoch_generator(self.config.seed, self.epoch)
        batches = train_batches(self.data, self.kept_examples, self.config.batch_size, generator)
        steps = -(-len(self.kept_examples) // self.config.batch_size)
        bar = tqdm(batches, total=steps, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   leave=False, disable=not self.progress)
        loss_sum, correct_sum, seen = 0.0, 0, 0
        for indices, images, labels in bar:
            if self.compiled is not None:
                loss, correct = self.compiled.step(images, labels, self.optimizer.param_groups[0]["lr"])
            else:
                logits, loss_tensor = train_step(self.model, self.optimizer, self.sparse, images, labels)
                loss, correct = loss_tensor.item(), logits.detach().argmax(dim=1) == labels
            self.forgetting.update(indices, correct)
            loss_sum += loss * len(labels)
            correct_sum += int(correct.sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct_sum / seen:.3f}",
                            density=f"{self.sparse.overall_density():.3f}")
        return loss_sum / seen, correct_sum / seen

    def remove_unforgettable(self) -> None:
        """Drop the ``remove_count`` least-forgotten examples (from the loaded ranking if given)."""
        ranking = self.ranking_in if self.ranking_in is not None else self.forgetting.ranking()
        save_ranking(self.out_dir / RANKING_NAME, ranking, self.forgetting.events)
        removed = unforgettable(ranking, self.config.remove_count)
        keep = torch.ones(len(self.data.train), dtype=torch.bool)
        keep[removed] = False
        self.kept_examples = self.kept_examples[keep[self.kept_examples]]

    # -- outputs ---------------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint payload (plain types and tensors), the same for every backend."""
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
        "state_bytes": state["sparse_layers"], "dense_state_bytes": state["dense_equivalent"],
        "state_ratio": state["sparse_layers"] / state["dense_equivalent"],
        "mutation_and_build_seconds": overhead, "mutation_and_build_share": overhead / total if total else 0.0,
        "seconds": total,
    }


@torch.no_grad()
def evaluate(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], data: Dataset,
             batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy on the test split, in eval mode (a module, or a function giving the
    eval-mode logits of a batch: the compiled backend's)."""
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in test_batches(data.test, batch_size):  # the training batch: same kernels
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
    if seen == 0:
        raise ConfigError("the test split is empty")
    return loss_sum / seen, correct / seen
