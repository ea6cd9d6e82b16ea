"""What ``schedules`` knows of a sparsity scheme, as one :class:`SchemeSpec` per scheme (one file each).

A spec says what a unit of the scheme is, which weights the scheme can take, how a mask of it is packed
into its compact format (the format class, with the walk its kernels take through it, is in the same
file), which convolutions its kernels take, and how to draw a random valid mask. ``mest.schemes``
extends a spec with scoring, prune and grow; ``tvm_passes.keep_dense`` asks it which layers its kernel
takes. Adding a scheme: see the README ("Adding a sparsity scheme").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from schedules.sparse_format import SparseFormat


class SchemeSpec(ABC):
    """One sparsity scheme as the formats, kernels and masks see it.

    Attributes
    ----------
    name : str
        The scheme's name (``--scheme``, checkpoints, the tuning database).
    unit : str
        What one unit is, for messages and docs.
    max_density : float
        The densest mask the scheme can hold (pattern: 4 of 9).
    dense_kernel : bool
        True when its layers run as a smaller dense conv (PyTorch's, or TVM's dense schedule) rather
        than a sparse kernel of :mod:`schedules.kernels`.
    """

    name: ClassVar[str]
    unit: ClassVar[str]
    max_density: ClassVar[float] = 1.0
    dense_kernel: ClassVar[bool] = False

    def weight_refusal(self, weight_shape: Sequence[int]) -> str:
        """Why the scheme cannot take a weight of this shape (``""`` when it can).

        The default takes any 4-d conv weight ``[out, in, kh, kw]``.
        """
        if len(weight_shape) != 4:
            return f"{self.name} sparsity needs a 4-d conv weight, got shape {tuple(weight_shape)}"
        return ""

    @abstractmethod
    def unit_count(self, weight_shape: Sequence[int]) -> int:
        """Units in a weight of this shape (elements, blocks, 3x3 kernels, filters)."""

    def kernel_refusal(self, weight_shape: Sequence[int], padding: Sequence[int], strides: Sequence[int]) -> str:
        """Why no kernel of the scheme takes this conv (``""`` when one does).

        The sparse kernels of :mod:`schedules.kernels` take 3x3 convs with padding 1 and stride 1 or 2
        (NCHW/OIHW float32, ungrouped, undilated: :mod:`tvm_passes.keep_dense` checks those).
        """
        refusal = self.weight_refusal(weight_shape)
        if refusal or self.dense_kernel:
            return refusal
        if tuple(weight_shape[2:]) != (3, 3) or any(int(p) != 1 for p in padding):
            return f"no {self.name} kernel for a {weight_shape[2]}x{weight_shape[3]} conv with padding {list(map(int, padding))}"
        if sorted({int(s) for s in strides}) not in ([1], [2]):
            return f"no {self.name} kernel for strides {list(map(int, strides))}"
        return ""

    @abstractmethod
    def pack(self, weight: torch.Tensor, mask: torch.Tensor, capacity: int | None) -> SparseFormat:
        """The compact format of ``weight * mask`` (checked float32 ``[O, I, 3, 3]`` and bool mask).

        Raises
        ------
        SparseFormatError
            A mask this scheme cannot hold, or a capacity below its count.
        """

    @abstractmethod
    def random_mask(self, shape: tuple[int, int, int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        """A random valid mask keeping about ``density`` of a ``[O, I, 3, 3]`` weight (one unit at least)."""
