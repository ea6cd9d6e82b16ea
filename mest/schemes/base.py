"""What every sparsity scheme shares: the unit-level top-k prune and the random grow.

A scheme of ``mest`` extends the scheme's spec of ``schedules`` (:mod:`schedules.schemes`: its unit,
which weights it takes, its format) with scoring, prune and grow. It sees a conv weight as a grid of
*units* (an element, a 4x1 block, a 3x3 kernel, a whole output filter) laid out as
``[rows, units_per_row]``. Pruning keeps the best-scored active units and
growing re-opens random inactive ones; both work row by row so that a scheme can ask for the same
count in every row (the pattern scheme's filter balance) or treat the whole layer as one row.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from fractions import Fraction

import torch

from mest.errors import SchemeError
from schedules.schemes.base import SchemeSpec


def check_density(density: float) -> None:
    """Raise :class:`SchemeError` unless ``0 < density <= 1`` (sparsity in ``[0, 1)``)."""
    if not 0.0 < float(density) <= 1.0:
        raise SchemeError(f"sparsity {1.0 - float(density):g} is outside [0, 1)")


def units_at(density: float, units: int) -> int:
    """How many of ``units`` a layer keeps at ``density``: rounded, and never none.

    A layer without a unit would be cut out of the network (and the tvm backend has no empty kernel),
    so every scheme keeps at least one, on both backends (pattern: one kernel per filter).
    """
    return max(1, round(density * units))


def keep_top_units(scores: torch.Tensor, active: torch.Tensor, keep_per_row: int) -> torch.Tensor:
    """Keep the ``keep_per_row`` best-scored active units of each row.

    Parameters
    ----------
    scores : torch.Tensor
        float ``[rows, units]``; larger is more important.
    active : torch.Tensor
        bool ``[rows, units]``: the units that may be kept.
    keep_per_row : int
        How many to keep in every row; rows with fewer active units keep all of them.

    Returns
    -------
    torch.Tensor
        bool ``[rows, units]``, a subset of ``active``. Ties break towards the lower index, so the
        result does not depend on sort stability.
    """
    units = scores.shape[1]
    keep_per_row = max(0, min(int(keep_per_row), units))
    # Inactive units rank below every active one; ties go to the lower index (stable sort).
    ranked = torch.where(active, scores.double(), torch.tensor(float("-inf"), dtype=torch.float64))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :keep_per_row]
    kept = torch.zeros_like(active)
    kept.scatter_(1, order, True)
    return kept & active


def grow_random_units(active: torch.Tensor, total_per_row: int, generator: torch.Generator) -> torch.Tensor:
    """Re-open random inactive units until every row has ``total_per_row`` active units.

    Parameters
    ----------
    active : torch.Tensor
        bool ``[rows, units]``.
    total_per_row : int
        Target count per row; rows already at or above it are left as they are.
    generator : torch.Generator
        Source of the random choice.

    Returns
    -------
    torch.Tensor
        bool ``[rows, units]``, a superset of ``active``.
    """
    units = active.shape[1]
    total_per_row = max(0, min(int(total_per_row), units))
    noise = torch.rand(active.shape, generator=generator, dtype=torch.float64)
    # Active units first (score 2 > any noise), then inactive ones in random order.
    ranked = torch.where(active, torch.tensor(2.0, dtype=torch.float64), noise)
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :total_per_row]
    grown = torch.zeros_like(active)
    grown.scatter_(1, order, True)
    return grown | active


def derived_generator(seed: int, epoch: int, name: str) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, layer name)``, so every run and worker agrees."""
    key = f"{seed}:{epoch}:{name}".encode()
    return torch.Generator().manual_seed(zlib.crc32(key) ^ (int(seed) << 32))


class Scheme(ABC):
    """A sparsity scheme: its spec (unit, valid weights), its prune-to-density and its grow-to-density.

    ``prune`` keeps the best units of the current mask (by the aggregated importance score) until the
    layer's density is ``density``; ``grow`` re-opens random empty units until it is ``density``.
    Grown weights are left for the caller to zero (they are outside the old mask, so already zero).
    """

    spec: SchemeSpec
    #: Whether a pruned unit takes the BatchNorm channel after it along (whole output filters).
    masks_batch_norm: bool = False

    @property
    def name(self) -> str:
        """The scheme's name (its spec's)."""
        return self.spec.name

    def validate(self, weight_shape: torch.Size) -> None:
        """Raise :class:`SchemeError` when the scheme cannot take a weight of this shape."""
        refusal = self.spec.weight_refusal(weight_shape)
        if refusal:
            raise SchemeError(refusal)

    @abstractmethod
    def prune(self, score: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
        """Return the mask keeping the most important units of ``mask`` at ``density``."""

    @abstractmethod
    def grow(self, mask: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
        """Return ``mask`` with random empty units re-opened up to ``density``."""

    def check(self, weight_shape: torch.Size, density: float) -> None:
        """Validate the shape and the density together."""
        check_density(density)
        self.validate(weight_shape)
        if density > self.spec.max_density + 1e-9:
            most = Fraction(self.spec.max_density).limit_denominator(16)
            raise SchemeError(f"{self.name} sparsity keeps at most {most.numerator} of {most.denominator} weights: "
                              f"sparsity {1 - density:g} is below {1 - self.spec.max_density:.4f}")
