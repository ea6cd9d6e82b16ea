"""ChannelTraining: channel-sparse layers of the training step (work in progress).

Where it runs: phase 2 of :func:`tvm_passes.training_pipeline.build_training_step`.

What it refuses: every channel layer, for now (:class:`~tvm_passes.errors.CompileError`).
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm

from schedules.formats import SparseFormat

from .errors import CompileError


@tvm.transform.module_pass(opt_level=0, name="mest.ChannelTraining")
class ChannelTraining:
    """Compact the channel-sparse layers of ``main`` (see the module docstring)."""

    def __init__(self, layers: Mapping[str, SparseFormat]):
        self.layers = dict(layers)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """Apply the pass (see the module docstring)."""
        if self.layers:
            raise CompileError(f"{next(iter(self.layers))}: channel layers are not compiled into the training step yet")
        return mod
