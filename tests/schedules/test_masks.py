"""Random scheme masks: valid for their format and near the asked density."""

from __future__ import annotations

import pytest
import torch

from schedules.formats import SCHEMES, pack
from schedules.masks import random_mask


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("density", [0.05, 0.1, 0.5])
def test_masks_pack_and_have_the_density(scheme, density):
    shape = (64, 32, 3, 3)
    mask = random_mask(scheme, shape, density, torch.Generator().manual_seed(0))
    assert pack(scheme, torch.randn(shape), mask).nnz == int(mask.sum())
    assert abs(float(mask.float().mean()) - density) <= 0.05 + 0.5 * density
