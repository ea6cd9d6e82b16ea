"""Fixtures of the trainer tests: a small slice of the digits data and a fast configuration."""

from __future__ import annotations

import pytest

from mest.config import TrainConfig
from mest.data import Dataset, Split, load_dataset


@pytest.fixture(scope="session")
def small_digits() -> Dataset:
    """The digits dataset cut to 256 training and 128 test examples."""
    full = load_dataset("digits")
    return Dataset(
        name="digits",
        train=Split(full.train.images[:256], full.train.labels[:256]),
        test=Split(full.test.images[:128], full.test.labels[:128]),
        num_classes=full.num_classes, crop_padding=full.crop_padding, horizontal_flip=full.horizontal_flip,
    )


@pytest.fixture
def tiny_config() -> TrainConfig:
    """Four epochs of the tiny model, mutating every epoch, removing 32 examples at epoch 2
    (masked dense backend; the tvm backend's tests override it)."""
    return TrainConfig(model="tiny", epochs=4, update_freq=1, decay_epochs=(2, 3), batch_size=32,
                       remove_epoch=2, remove_count=32, sparsity=0.8, backend="torch-mask")
