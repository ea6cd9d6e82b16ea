"""Forgetting statistics (Toneva et al., 2019) and the removal of unforgettable examples.

Each training example's correct/incorrect outcome is recorded at every presentation, from the
ordinary training forward pass. A forgetting event is a correct -> incorrect transition; an example
never learned counts as maximally forgotten. At the removal epoch the examples with the fewest
events are dropped. A saved ranking, loaded again, really removes its examples (the reference's load
path removed none).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from devices.files import atomic_write_text
from mest.errors import ConfigError


@dataclass
class ForgettingStats:
    """Per-example state: last outcome, forgetting events, and whether it was ever learned."""

    last_correct: torch.Tensor
    events: torch.Tensor
    learned: torch.Tensor

    @classmethod
    def empty(cls, num_examples: int) -> "ForgettingStats":
        """Statistics of ``num_examples`` examples never presented."""
        return cls(
            last_correct=torch.zeros(num_examples, dtype=torch.bool),
            events=torch.zeros(num_examples, dtype=torch.int64),
            learned=torch.zeros(num_examples, dtype=torch.bool),
        )

    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """Record one presentation of the examples ``indices`` with outcomes ``correct``."""
        forgotten = self.last_correct[indices] & ~correct
        self.events[indices] += forgotten.to(torch.int64)
        self.learned[indices] |= correct
        self.last_correct[indices] = correct

    def scores(self) -> torch.Tensor:
        """Forgetting events per example; never-learned examples score infinity."""
        return torch.where(self.learned, self.events.double(), torch.tensor(math.inf, dtype=torch.float64))

    def ranking(self) -> torch.Tensor:
        """Example indices from least to most forgotten (ties by index)."""
        return torch.sort(self.scores(), stable=True).indices

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"last_correct": self.last_correct, "events": self.events, "learned": self.learned}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ForgettingStats":
        return cls(state["last_correct"].bool(), state["events"].long(), state["learned"].bool())


def unforgettable(ranking: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` least-forgotten examples of a ranking, sorted by index."""
    if not 0 <= count <= len(ranking):
        raise ConfigError(f"cannot remove {count} of {len(ranking)} training examples")
    return torch.sort(ranking[:count]).values


def save_ranking(path: Path, ranking: torch.Tensor, events: torch.Tensor) -> None:
    """Write a ranking (least forgotten first) and the event counts as JSON, atomically."""
    atomic_write_text(Path(path), json.dumps({
        "format": "mest-forgetting-ranking", "num_examples": len(ranking),
        "ranking": ranking.tolist(), "events": events.tolist(),
    }))


def load_ranking(path: Path, num_examples: int) -> torch.Tensor:
    """Read a ranking written by :func:`save_ranking` for a training set of ``num_examples``."""
    try:
        data = json.loads(Path(path).read_text())
        ranking = torch.tensor(data["ranking"], dtype=torch.int64)
        ok = data.get("format") == "mest-forgetting-ranking"
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"cannot read forgetting ranking {path}: {err}") from None
    if not ok or len(ranking) != num_examples or not torch.equal(torch.sort(ranking).values, torch.arange(num_examples)):
        raise ConfigError(f"forgetting ranking {path} is not a ranking of this training set ({num_examples} examples)")
    return ranking
