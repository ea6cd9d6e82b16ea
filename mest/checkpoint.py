"""Checkpoints: everything a run needs to resume bit for bit, written atomically, read safely.

A checkpoint is a ``torch.save`` dict of tensors and plain types only, so it loads with
``torch.load(weights_only=True)``. It holds the configuration, the model spec, weights, masks and
schemes, optimizer and LR scheduler state, the next epoch, forgetting statistics, the kept training
examples, the metrics history and the torch RNG state. A truncated or foreign file raises
:class:`~mest.errors.CheckpointError`; nothing here ever writes over a file it could not read.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from devices.files import atomic_write
from mest.config import TrainConfig
from mest.errors import CheckpointError, MestError
from mest.models import build_model

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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check a checkpoint written by the trainer.

    Parameters
    ----------
    path : str or Path
        The checkpoint file or its run directory.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, not a torch file, or not a mest checkpoint.
    """
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch file ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mest-tvm checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, this mest reads {VERSION}")
    try:
        config = TrainConfig.from_dict(state["config"])
        spec = ModelSpec(**state["model_spec"])
        epoch = int(state["epoch"])
        for key in ("model", "sparse", "optimizer", "scheduler"):
            state[key]
    except (KeyError, TypeError, MestError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete or inconsistent ({err})") from None
    return Checkpoint(path=path, config=config, model_spec=spec, epoch=epoch, state=state)


def model_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """The checkpoint's model with its (masked) weights loaded, in eval mode."""
    spec = checkpoint.model_spec
    model = build_model(spec.name, spec.num_classes, spec.in_channels)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit model {spec.name}: {str(err).splitlines()[0]}") from None
    return model.eval()
