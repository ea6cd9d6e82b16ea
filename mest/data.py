"""Datasets held in memory as tensors, batching with an explicit generator, and augmentation.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1 channel), split
  80/20 with a fixed seed; it ships with scikit-learn, so nothing is downloaded.
- ``cifar10`` / ``cifar100``: the standard python-pickle batches in a directory the user names.

Every random choice (shuffle, crop, flip) comes from a generator the trainer seeds per epoch, so a
resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mest.errors import ConfigError, DataError

DATASET_NAMES = ("digits", "cifar10", "cifar100")


@dataclass(frozen=True)
class Split:
    """Images ``[N, C, H, W]`` float32 (normalised) and labels ``[N]`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class Dataset:
    """A train and a test split with what the model and the augmentation need to know."""

    name: str
    train: Split
    test: Split
    num_classes: int
    crop_padding: int
    horizontal_flip: bool

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[2]


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : str
        ``digits``, ``cifar10`` or ``cifar100``.
    data_dir : str or Path, optional
        Directory of the CIFAR python-pickle batches (``data_batch_1`` ... ``test_batch`` for
        CIFAR-10, ``train`` and ``test`` for CIFAR-100). Unused for digits.
    """
    if name == "digits":
        return _load_digits()
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise ConfigError(f"{name} needs --data-dir: the folder of its python-pickle batches")
        return _load_cifar(name, Path(data_dir))
    raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")


def _normalised(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    train_idx, test_idx = order[:cut], order[cut:]
    train_x, test_x = _normalised(images[train_idx], images[test_idx])
    return Dataset("digits", Split(train_x, labels[train_idx]), Split(test_x, labels[test_idx]),
                   num_classes=10, crop_padding=1, horizontal_flip=False)


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR batch file missing: {path}")
    try:
        with path.open("rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"CIFAR batch file {path} is not a python pickle: {err}") from None


def _cifar_split(batches: list[dict], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[label_key]) for b in batches])
    return torch.from_numpy(data.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


def _load_cifar(name: str, data_dir: Path) -> Dataset:
    if not data_dir.is_dir():
        raise DataError(f"data directory does not exist: {data_dir}")
    if name == "cifar10":
        train_files, test_files, key, classes = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10
    else:
        train_files, test_files, key, classes = ["train"], ["test"], b"fine_labels", 100
    try:
        train_x, train_y = _cifar_split([_read_pickle(data_dir / f) for f in train_files], key)
        test_x, test_y = _cifar_split([_read_pickle(data_dir / f) for f in test_files], key)
    except (KeyError, ValueError) as err:
        raise DataError(f"{data_dir} does not hold {name} python-pickle batches ({err})") from None
    train_x, test_x = _normalised(train_x, test_x)
    return Dataset(name, Split(train_x, train_y), Split(test_x, test_y),
                   num_classes=classes, crop_padding=4, horizontal_flip=True)


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, then a random horizontal flip."""
    n, _, h, w = images.shape
    if padding:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, images.shape[1], h, w + 2 * padding)
        images = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, images.shape[1], h, w)
        images = images.gather(3, cols)
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images


def train_batches(
    dataset: Dataset, indices: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented batches of the training examples ``indices``.

    Yields
    ------
    tuple
        ``(example indices, images, labels)``; the indices key the forgetting statistics.
    """
    order = indices[torch.randperm(len(indices), generator=generator)]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        images = augment(dataset.train.images[idx], dataset.crop_padding, dataset.horizontal_flip, generator)
        yield idx, images, dataset.train.labels[idx]


def test_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, un-augmented."""
    for start in range(0, len(split), batch_size):
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
