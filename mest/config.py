"""Typed training configuration and its named presets.

A preset name reads ``<model>-<dataset>-<schedule>-<sparsity %>``, e.g. ``resnet32-cifar10-em-s-90``
(``em`` = Elastic Mutation, ``em-s`` = with Soft Memory Bound). CLI flags override a preset's fields.
Long CIFAR runs follow the reference (160 epochs, mutation every 5, decay at 90 and 120, 12,000 of
50,000 examples removed at epoch 70); digits runs scale those epochs down to a few minutes on 2 cores.
"""

from __future__ import annotations

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
        object.__setattr__(self, "decay_epochs", tuple(int(e) for e in self.decay_epochs))
        _check_choice("model", self.model, MODEL_NAMES)
        _check_choice("dataset", self.dataset, DATASET_NAMES)
        _check_choice("scheme", self.scheme, tuple(SCHEMES))
        _check_choice("backend", self.backend, BACKENDS)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be positive")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr:g}")
        if self.remove_count < 0:
            raise ConfigError(f"remove_count must be >= 0, got {self.remove_count}")
        self.mutation_schedule()  # validates schedule kind, sparsity, update_freq, decay epochs

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
    f"{model}-{dataset}-{label}-{round(sparsity * 100)}": _preset(model, dataset, schedule, sparsity)
    for model in ("resnet32", "resnet20")
    for dataset in ("cifar10", "cifar100", "digits")
    for schedule, label in (("em", "em"), ("ems", "em-s"))
    for sparsity in (0.9, 0.95)
}
DEFAULT_PRESET = "resnet20-digits-em-s-90"


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; :class:`ConfigError` listing a few known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; e.g. {', '.join(sorted(PRESETS)[:4])} (see --list-presets)"
        ) from None
