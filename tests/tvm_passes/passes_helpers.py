"""Helpers of the tvm_passes tests: tiny models trained a few steps, the logits tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devices.errors import ToolchainMissingError
from devices.targets import get_target
from mest.models import build_model
from mest.sparsity import SparseState, default_profile
from schedules.schemes import SCHEMES  # noqa: F401 - the passes tests run every scheme

#: Logits of the compiled module vs PyTorch eval: float32, same operations in another order
#: (BN folded into the weights, sparse accumulation order); relative to the largest logit.
RTOL = 1e-4
ATOL_REL = 1e-4


def assert_logits_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Compare logits with the stated tolerance (see :data:`RTOL`, :data:`ATOL_REL`)."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_REL * scale)


def trained_sparse_model(name: str, scheme: str, sparsity: float = 0.9, steps: int = 3,
                         image: int = 8, seed: int = 0) -> tuple[torch.nn.Module, SparseState]:
    """A model pruned to ``sparsity`` with ``scheme`` and trained ``steps`` SGD steps on random data.

    Training moves the BN statistics and affine parameters away from their init, so folding them is
    really exercised; masks are applied to weights and gradients as the trainer does.
    """
    torch.manual_seed(seed)
    model = build_model(name, 10, 1)
    state = SparseState.prune_init(model, default_profile(model, sparsity), scheme)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 1, image, image)
        y = torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        state.apply_to_grads()
        optimizer.step()
        state.apply_to_weights()
    return model.eval(), state


def skip_without_tools(target: str) -> None:
    """Skip when the cross-compiler or qemu of ``target`` is missing (the reason names the packages)."""
    try:
        get_target(target).require_tools(need_qemu=True)
    except ToolchainMissingError as err:
        pytest.skip(str(err))
