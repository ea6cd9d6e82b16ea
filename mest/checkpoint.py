"""Checkpoints: everything a run needs to resume bit for bit, written atomically, read safely.

A checkpoint is a ``torch.save`` dict of tensors and plain types only, so it loads with
``torch.load(weights_only=True)``. It holds the configuration, the model spec, weights, masks and
schemes, optimizer and LR scheduler state, the next epoch, forgetting statistics, the kept training
examples, the metrics history and the torch RNG state. A truncated, damaged (its zip checksums),
foreign or inconsistent file raises :class:`~mest.errors.CheckpointError`; nothing here ever writes
over a file it could not read.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from devices.files import atomic_write
from mest.config import TrainConfig
from mest.errors import CheckpointError, MestError
from mest.models import MODEL_NAMES, build_model
from mest.schemes import SCHEMES

FORMAT = "mest-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`mest.models.build_model` needs, plus the input image size."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES or not all(type(n) is int and n > 0 for n in
                                                    (self.num_classes, self.in_channels, self.image_size)):
            raise CheckpointError(f"model spec {self} names no model this mest builds"[:200])


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``state`` is the raw dict for the trainer to restore from."""

    path: Path
    config: TrainConfig
    model_spec: ModelSpec
    epoch: int
    state: dict

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.state["model"]

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Bool mask per masked parameter FQN (sparse conv weights, channel-coupled BN params)."""
        return self.state["sparse"]["masks"]

    @property
    def schemes(self) -> dict[str, str]:
        """Scheme name per sparse conv weight FQN."""
        return self.state["sparse"]["schemes"]


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write ``state`` (which must hold ``config``, ``model_spec``, ``epoch``)."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the ``checkpoint.pt`` inside a run directory."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file that ``path`` (a file or a run directory) names; :class:`CheckpointError` if none."""
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


#: Type of every entry of the payload (``sparse`` holds dicts ``masks``, ``schemes``, ``sparsity``).
PAYLOAD_TYPES = {"config": dict, "model_spec": dict, "epoch": int, "model": dict, "sparse": dict, "optimizer": dict,
                 "scheduler": dict, "forgetting": dict, "kept_examples": torch.Tensor, "history": list, "rng": dict}


def _payload_problem(state: dict) -> str | None:
    """What makes a payload unusable, in a few words, or None (weights and masks are checked to fit)."""
    for key, kind in PAYLOAD_TYPES.items():
        value = state.get(key)
        if not (type(value) is int if kind is int else isinstance(value, kind)):  # a bool is no epoch
            return f"its {key!r} is {type(value).__name__}, not {kind.__name__}"
    model, sparse = state["model"], state["sparse"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "its weights are not tensors by parameter name"
    masks, schemes = sparse.get("masks"), sparse.get("schemes")
    if not (isinstance(masks, dict) and isinstance(schemes, dict) and isinstance(sparse.get("sparsity"), dict)):
        return "its sparse state lacks masks, schemes or sparsity"
    for fqn, mask in masks.items():
        if not (isinstance(mask, torch.Tensor) and fqn in model and mask.shape == model[fqn].shape):
            return f"its mask {str(fqn)[:60]!r} fits no weight of the model"
    for fqn, scheme in schemes.items():
        sparsity = sparse["sparsity"].get(fqn)
        if (fqn not in masks or not isinstance(scheme, str) or scheme not in SCHEMES
                or type(sparsity) not in (int, float) or not 0.0 <= sparsity < 1.0):
            return f"its sparse layer {str(fqn)[:60]!r} has no mask, no sparsity in [0, 1) or an unknown scheme"
    return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check a checkpoint written by the trainer.

    The file is read as data only (``torch.load(weights_only=True)``) after the CRC of every entry
    of its zip archive has been checked, so a flipped byte is an error rather than a changed weight.

    Parameters
    ----------
    path : str or Path
        The checkpoint file or its run directory.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, damaged, not a torch file, not a mest checkpoint, or its
        content does not fit together (masks of no weight, an epoch past the run, ...).
    """
    path = find_checkpoint(path)
    return checkpoint_from_bytes(read_checkpoint_bytes(path), path)


def read_checkpoint_bytes(path: Path) -> bytes:
    """The content of the checkpoint file ``path``; :class:`CheckpointError` if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or type(err).__name__}") from None


def checkpoint_from_bytes(data: bytes, path: Path) -> Checkpoint:
    """:func:`load_checkpoint` of a checkpoint file's bytes (as rank 0 sends them to the other ranks).

    Parameters
    ----------
    data : bytes
        The file's content.
    path : Path
        Where it was read (for messages, and the run directory it belongs to).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            damaged = archive.testzip()
        state = None if damaged else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a torch.load of corrupt bytes raises any type; none is our bug)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch file ({reason[:120]})") from None
    if damaged:
        raise CheckpointError(f"checkpoint {path} is damaged: {damaged} fails its checksum")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mest-tvm checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')!r:.40}, this mest reads {VERSION}")
    problem = _payload_problem(state)
    if problem:
        raise CheckpointError(f"checkpoint {path} is inconsistent: {problem}")
    try:
        config = TrainConfig.from_dict(state["config"])
        spec = ModelSpec(**state["model_spec"])
    except (TypeError, MestError) as err:
        raise CheckpointError(f"checkpoint {path} is inconsistent ({str(err)[:160]})") from None
    if not 0 <= state["epoch"] <= config.epochs:
        raise CheckpointError(f"checkpoint {path} is inconsistent: epoch {state['epoch']} of a {config.epochs}-epoch run")
    return Checkpoint(path=path, config=config, model_spec=spec, epoch=state["epoch"], state=state)


def model_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """The checkpoint's model with its (masked) weights loaded, in eval mode."""
    spec = checkpoint.model_spec
    model = build_model(spec.name, spec.num_classes, spec.in_channels)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit model {spec.name}: {str(err).splitlines()[0]}") from None
    return model.eval()
