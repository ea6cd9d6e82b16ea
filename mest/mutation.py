"""Mutation schedules: when each sparse layer mutates and to which densities it prunes and grows.

A schedule is a step function of the epoch: before the first decay epoch phase 0, then phase 1, ...
At a mutation epoch (every ``update_freq`` epochs, epoch 0 included) a layer is pruned to the phase's
lower density bound and grown back to its upper bound.

- Elastic Mutation (``em``): grow to the target; prune a swap fraction of the budget below it
  (20%, 10%, then 0% of the target density: 92/91/90% sparsity for a 90% target).
- Soft Memory Bound (``ems``): prune to the target; grow above it by 5, 2.5, then 0 points of
  density (85/87.5/90% sparsity for a 90% target), so the budget is only met in the last phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from mest.errors import ConfigError

SCHEDULE_KINDS = ("em", "ems")
#: EM: points of the target density swapped per mutation, per phase (relative to the density).
EM_SWAP_FRACTION = (0.2, 0.1, 0.0)
#: EM&S: points of density grown above the target per phase (absolute).
EMS_EXTRA_DENSITY = (0.05, 0.025, 0.0)


@dataclass(frozen=True)
class DensityBounds:
    """The densities a mutation prunes to (``lower``) and grows back to (``upper``)."""

    lower: float
    upper: float


@dataclass(frozen=True)
class MutationSchedule:
    """When mutations happen and the density bounds of each phase.

    Parameters
    ----------
    kind : str
        ``em`` (Elastic Mutation) or ``ems`` (Elastic Mutation with Soft Memory Bound).
    sparsity : float
        Target sparsity of a sparse layer, in ``[0, 1)``.
    update_freq : int
        Epochs between mutations; epoch 0 mutates.
    decay_epochs : tuple of int
        Epochs at which the bounds step to the next phase (two of them: three phases).
    """

    kind: str
    sparsity: float
    update_freq: int
    decay_epochs: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"unknown mutation schedule {self.kind!r}; known: {', '.join(SCHEDULE_KINDS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity {self.sparsity:g} is outside [0, 1)")
        if self.update_freq < 1:
            raise ConfigError(f"update_freq must be >= 1, got {self.update_freq}")
        if len(self.decay_epochs) != len(EM_SWAP_FRACTION) - 1 or list(self.decay_epochs) != sorted(self.decay_epochs):
            raise ConfigError(f"decay_epochs must be two increasing epochs, got {list(self.decay_epochs)}")

    def phase(self, epoch: int) -> int:
        """Index of the schedule phase that ``epoch`` falls in."""
        return sum(epoch >= e for e in self.decay_epochs)

    def is_mutation_epoch(self, epoch: int) -> bool:
        """Whether the sparse layers mutate at the start of ``epoch``."""
        return epoch % self.update_freq == 0

    def bounds(self, epoch: int, sparsity: float | None = None) -> DensityBounds:
        """Density bounds of a layer at ``epoch``.

        Parameters
        ----------
        epoch : int
            The epoch.
        sparsity : float, optional
            The layer's own target sparsity (a non-uniform profile); the schedule's by default.
        """
        density = 1.0 - (self.sparsity if sparsity is None else sparsity)
        phase = self.phase(epoch)
        if self.kind == "em":
            return DensityBounds(lower=density * (1.0 - EM_SWAP_FRACTION[phase]), upper=density)
        return DensityBounds(lower=density, upper=min(1.0, density + EMS_EXTRA_DENSITY[phase]))
