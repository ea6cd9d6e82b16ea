"""Typed training configuration and its named presets.

A preset name reads ``<model>-<dataset>-<schedule>-<sparsity %>``, e.g. ``resnet32-cifar10-ems-90``
(``em`` = Elastic Mutation, ``ems`` = with Soft Memory Bound: the names of ``--schedule``). CLI flags override a preset's fields.
Long CIFAR runs follow the reference (160 epochs, mutation every 5, decay at 90 and 120, 12,000 of
50,000 examples removed at epoch 70); digits runs scale those epochs down to a few minutes on 2 cores.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields, replace

from mest.data import DATASET_NAMES
from mest.errors import ConfigError
from mest.models import MODEL_NAMES
from mest.mutation import MutationSchedule
from mest.schemes import SCHEMES

BACKENDS = ("tvm", "compiled", "torch-mask")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the seed, bit for bit on CPU)."""

    model: str = "resnet20"
    dataset: str = "digits"
    data_dir: str | None = None
    scheme: str = "irregular"
    sparsity: float = 0.9
    schedule: str = "ems"
    update_freq: int = 3
    decay_epochs: tuple[int, ...] = (17, 23)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_weight: float = 0.0
    remove_epoch: int | None = 13
    remove_count: int = 345
    ranking_in: str | None = None
    profile: str | None = None
    seed: int = 0
    backend: str = "tvm"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(self):
            object.__setattr__(self, f.name, _typed(f.name, getattr(self, f.name), hints[f.name]))
        _check_choice("model", self.model, MODEL_NAMES)
        _check_choice("dataset", self.dataset, DATASET_NAMES)
        _check_choice("scheme", self.scheme, tuple(SCHEMES))
        _check_choice("backend", self.backend, BACKENDS)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sparsity", "lr", "momentum", "weight_decay", "grad_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr:g}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum:g}")
        for name in ("weight_decay", "grad_weight", "remove_count"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name):g}")
        if self.remove_epoch is not None and self.remove_epoch < 0:
            raise ConfigError(f"remove_epoch must be >= 0, got {self.remove_epoch}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.dataset == "digits" and self.data_dir is not None:
            raise ConfigError("data_dir is for cifar10 and cifar100 (digits ships with scikit-learn); "
                              "give the dataset too, e.g. --dataset cifar10")
        if self.ranking_in is not None and not self.removes_examples():
            raise ConfigError(f"ranking_in has no effect: this run removes no example (remove_count "
                              f"{self.remove_count}, remove_epoch {self.remove_epoch} of {self.epochs} epochs)")
        self.mutation_schedule()  # validates schedule kind, sparsity, update_freq, decay epochs

    def removes_examples(self) -> bool:
        """Whether the run removes examples (a count, at an epoch it reaches)."""
        return self.remove_count > 0 and self.remove_epoch is not None and self.remove_epoch < self.epochs

    def mutation_schedule(self) -> MutationSchedule:
        """The mutation schedule this configuration describes."""
        return MutationSchedule(self.schedule, self.sparsity, self.update_freq, self.decay_epochs)

    def to_dict(self) -> dict:
        """Plain types only (for checkpoints and metrics)."""
        data = asdict(self)
        data["decay_epochs"] = list(self.decay_epochs)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def override(self, **changes: object) -> "TrainConfig":
        """A copy with the non-None ``changes`` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _typed(name: str, value: object, kind: object) -> object:
    """``value`` as a field of type ``kind`` (an int is taken as a float), else :class:`ConfigError`."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in options:
        return None
    if float in options and type(value) in (int, float):
        return float(value)
    if type(value) in options:  # str or int (a bool is not an int here)
        return value
    if tuple[int, ...] in options and isinstance(value, (tuple, list)) and all(type(v) is int for v in value):
        return tuple(value)
    expected = " or ".join(o.__name__ if isinstance(o, type) else str(o) for o in options).replace("NoneType", "None")
    raise ConfigError(f"{name} must be {expected}, got {value!r}"[:200])


def _check_choice(what: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ConfigError(f"unknown {what} {value!r}; known: {', '.join(known)}")


def _preset(model: str, dataset: str, schedule: str, sparsity: float) -> TrainConfig:
    if dataset == "digits":
        timing = dict(epochs=30, update_freq=3, decay_epochs=(17, 23), remove_epoch=13, remove_count=345)
    else:
        timing = dict(epochs=160, update_freq=5, decay_epochs=(90, 120), remove_epoch=70, remove_count=12000)
    return TrainConfig(model=model, dataset=dataset, schedule=schedule, sparsity=sparsity, **timing)


PRESETS: dict[str, TrainConfig] = {
    f"{model}-{dataset}-{schedule}-{round(sparsity * 100)}": _preset(model, dataset, schedule, sparsity)
    for model in ("resnet32", "resnet20")
    for dataset in ("cifar10", "cifar100", "digits")
    for schedule in ("em", "ems")
    for sparsity in (0.9, 0.95)
}
DEFAULT_PRESET = "resnet20-digits-ems-90"


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; :class:`ConfigError` listing a few known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; e.g. {', '.join(sorted(PRESETS)[:4])} (see --list-presets)"
        ) from None
