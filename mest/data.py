"""Datasets held in memory as tensors, batching with an explicit generator, and augmentation.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1 channel), split
  80/20 with a fixed seed; it ships with scikit-learn, so nothing is downloaded.
- ``cifar10`` / ``cifar100``: the standard python-pickle batches in a directory the user names,
  read as data only (an unpickler that builds dicts, lists, bytes, str, int and numpy arrays and
  refuses any other name unimported) and checked before training: uint8 images of 3072 bytes
  (32x32x3), as many labels as images, every label a class of the dataset.

Every random choice (shuffle, crop, flip) comes from a generator the trainer seeds per epoch, so a
resumed run sees exactly the batches of an uninterrupted one; under torchrun every rank draws the
same choices for each whole batch and takes its :func:`shard` of it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mest.errors import ConfigError, DataError

DATASET_NAMES = ("digits", "cifar10", "cifar100")
#: Bytes of one CIFAR image in a python batch: 32 x 32 pixels x 3 channels, channel-major.
CIFAR_IMAGE_BYTES = 3 * 32 * 32


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


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes, and for nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not how a CIFAR batch stores bytes")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """``bytes()`` as pickle protocol 2 writes an empty bytes object (no size argument)."""
    return b""


_ARRAY = np.zeros(1, dtype=np.uint8)
_RECONSTRUCT, _FROMBUFFER = _ARRAY.__reduce_ex__(2)[0], _ARRAY.__reduce_ex__(5)[0]
#: The only globals a CIFAR python batch (dict, list, bytes, str, int and numpy arrays) refers to, by
#: the names old and new Python and numpy pickle them under. Anything else is refused unimported.
CIFAR_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data and numpy arrays, and never imports or calls anything else."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return CIFAR_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR batch holds "
                                         "(refused, not imported)") from None


def read_cifar_batch(path: Path) -> dict:
    """Unpickle one CIFAR python batch file as data only.

    Raises
    ------
    DataError
        The file is missing, unreadable, not a pickle, or refers to anything but plain data and
        numpy arrays (such a file is refused before anything it names is imported).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFAR batch file missing: {path}")
    try:
        content = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read CIFAR batch file {path}: {err.strerror}") from None
    try:
        return _CifarUnpickler(io.BytesIO(content), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 (corrupt bytes provoke any exception; none is a bug of ours)
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise DataError(f"CIFAR batch file {path} is not a CIFAR python-pickle batch: {reason}") from None


def _batch_arrays(batch: object, path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 3072]`` and labels ``int64 [N]`` of a batch, checked, or :class:`DataError`."""
    where = f"CIFAR batch file {path}"
    if not isinstance(batch, dict):
        raise DataError(f"{where} holds a {type(batch).__name__}, not a batch dict")
    for key in (b"data", label_key):
        if key not in batch:
            raise DataError(f"{where} has no {key.decode()!r} entry")
    images, labels = batch[b"data"], batch[label_key]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == CIFAR_IMAGE_BYTES):
        shape = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{where}: images are {shape}, CIFAR batches hold uint8 [N, {CIFAR_IMAGE_BYTES}] (32x32x3)")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"{where}: {label_key.decode()} is not a list of integers")
    if len(labels) != len(images):
        raise DataError(f"{where} holds {len(images)} images but {len(labels)} labels")
    wrong = next((v for v in labels if not 0 <= v < classes), None)
    if wrong is not None:
        raise DataError(f"{where} has label {wrong}, outside 0..{classes - 1}")
    return images, np.asarray(labels, dtype=np.int64)


def _cifar_split(paths: list[Path], label_key: bytes, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = [_batch_arrays(read_cifar_batch(p), p, label_key, classes) for p in paths]
    images = np.concatenate([a[0] for a in arrays]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([a[1] for a in arrays])
    if not len(labels):
        raise DataError(f"CIFAR batch files {', '.join(str(p) for p in paths)} hold no images")
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels)


def _load_cifar(name: str, data_dir: Path) -> Dataset:
    if not data_dir.is_dir():
        raise DataError(f"data directory does not exist: {data_dir}")
    if name == "cifar10":
        train_files, test_files, key, classes = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10
    else:
        train_files, test_files, key, classes = ["train"], ["test"], b"fine_labels", 100
    train_x, train_y = _cifar_split([data_dir / f for f in train_files], key, classes)
    test_x, test_y = _cifar_split([data_dir / f for f in test_files], key, classes)
    train_x, test_x = _normalised(train_x, test_x)
    return Dataset(name, Split(train_x, train_y), Split(test_x, test_y),
                   num_classes=classes, crop_padding=4, horizontal_flip=True)


@dataclass(frozen=True)
class Augmentation:
    """The random choices of one batch's augmentation: crop offsets (None without padding) and flips
    (None without flipping), one per image."""

    dy: torch.Tensor | None
    dx: torch.Tensor | None
    flipped: torch.Tensor | None

    @classmethod
    def draw(cls, n: int, padding: int, flip: bool, generator: torch.Generator) -> "Augmentation":
        """Draw the choices of ``n`` images (always in this order: row offsets, column offsets, flips)."""
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator) if padding else None
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator) if padding else None
        flipped = torch.rand(n, generator=generator) < 0.5 if flip else None
        return cls(dy, dx, flipped)

    def __getitem__(self, part: slice) -> "Augmentation":
        """The choices of the images ``part`` of the batch."""
        return Augmentation(*(None if t is None else t[part] for t in (self.dy, self.dx, self.flipped)))

    def apply(self, images: torch.Tensor, padding: int) -> torch.Tensor:
        """Random crop after zero padding by ``padding`` pixels, then a random horizontal flip."""
        n, _, h, w = images.shape
        if self.dy is not None:
            padded = F.pad(images, (padding,) * 4)
            rows = (self.dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, images.shape[1], h, w + 2 * padding)
            images = padded.gather(2, rows)
            cols = (self.dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, images.shape[1], h, w)
            images = images.gather(3, cols)
        if self.flipped is not None:
            images = torch.where(self.flipped[:, None, None, None], images.flip(3), images)
        return images


def shard(count: int, rank: int, ranks: int) -> slice:
    """The contiguous part of ``count`` items that rank ``rank`` of ``ranks`` takes.

    Parts are consecutive and cover all items; their sizes differ by at most one (the first parts
    are the larger), as ``torch.tensor_split`` cuts them.
    """
    base, extra = divmod(count, ranks)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Batch(NamedTuple):
    """A rank's part of one training batch.

    Attributes
    ----------
    indices : torch.Tensor
        Example indices (they key the forgetting statistics).
    images, labels : torch.Tensor
        The augmented images and their labels.
    examples : int
        Examples in the whole batch, over all ranks.
    """

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    examples: int


def train_batches(dataset: Dataset, indices: torch.Tensor, batch_size: int, generator: torch.Generator,
                  rank: int = 0, ranks: int = 1) -> Iterator[Batch]:
    """Shuffled, augmented batches of the training examples ``indices``: rank ``rank``'s part of each.

    Every rank draws the same permutation and the same augmentation of each whole batch from
    ``generator``, then takes its :func:`shard` of the batch, so the parts of all ranks together
    are exactly the batches of one process.
    """
    order = indices[torch.randperm(len(indices), generator=generator)]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        augmentation = Augmentation.draw(len(idx), dataset.crop_padding, dataset.horizontal_flip, generator)
        part = shard(len(idx), rank, ranks)
        images = augmentation[part].apply(dataset.train.images[idx[part]], dataset.crop_padding)
        yield Batch(idx[part], images, dataset.train.labels[idx[part]], len(idx))


def test_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, un-augmented."""
    for start in range(0, len(split), batch_size):
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
