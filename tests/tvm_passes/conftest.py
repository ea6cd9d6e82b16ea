"""Fixtures of the tvm_passes tests (helpers live in ``passes_helpers``)."""

from __future__ import annotations

import pytest
import torch

from mest.sparsity import SparseState
from passes_helpers import SCHEMES, trained_sparse_model


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, tuple[torch.nn.Module, SparseState]]:
    """The tiny model of each scheme, trained a few steps."""
    return {scheme: trained_sparse_model("tiny", scheme) for scheme in SCHEMES}
