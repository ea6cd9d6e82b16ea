"""training_cache: a built step is keyed by what shapes its code, not by any value."""

from __future__ import annotations

import torch

from schedules.formats import pack
from tvm_passes.training_cache import step_key
from tvm_passes.training_pipeline import TrainingConfig

SHAPE = (8, 1, 8, 8)


def _formats(mask: torch.Tensor, capacity: int, scale: float = 1.0) -> dict:
    weight = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * scale
    return {"layer1.0.conv1.weight": pack("irregular", weight, mask, capacity=capacity)}


def test_the_key_ignores_values_and_masks_of_the_same_capacity():
    generator = torch.Generator().manual_seed(1)
    first = torch.rand(8, 8, 3, 3, generator=generator) < 0.1
    second = torch.rand(8, 8, 3, 3, generator=generator) < 0.1
    assert not torch.equal(first, second)
    key = step_key("tiny/10/1/8", SHAPE, _formats(first, 80), TrainingConfig())
    assert step_key("tiny/10/1/8", SHAPE, _formats(second, 80, scale=3.0), TrainingConfig()) == key


def test_the_key_follows_capacity_batch_target_optimizer_and_model():
    mask = torch.rand(8, 8, 3, 3, generator=torch.Generator().manual_seed(2)) < 0.1
    key = step_key("tiny/10/1/8", SHAPE, _formats(mask, 80), TrainingConfig())
    others = [
        step_key("tiny/10/1/8", SHAPE, _formats(mask, 96), TrainingConfig()),  # a capacity change rebuilds
        step_key("tiny/10/1/8", (4, 1, 8, 8), _formats(mask, 80), TrainingConfig()),
        step_key("tiny/10/1/8", SHAPE, _formats(mask, 80), TrainingConfig(target="arm64")),
        step_key("tiny/10/1/8", SHAPE, _formats(mask, 80), TrainingConfig(weight_decay=5e-4)),
        step_key("tiny/100/1/8", SHAPE, _formats(mask, 80), TrainingConfig()),
        step_key("tiny/10/1/8", SHAPE, _formats(mask, 300), TrainingConfig()),  # index dtypes widen too
    ]
    assert len({key, *others}) == len(others) + 1
