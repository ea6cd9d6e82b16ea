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


def check_remove_count(count: int, num_examples: int) -> None:
    """Raise :class:`ConfigError` unless removing ``count`` examples leaves some of ``num_examples``."""
    if not 0 <= count < num_examples:
        raise ConfigError(f"remove_count {count} would leave no training example of {num_examples}; "
                          f"remove fewer (at most {num_examples - 1})")


def unforgettable(ranking: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` least-forgotten examples of a ranking, sorted by index."""
    check_remove_count(count, len(ranking))
    return torch.sort(ranking[:count]).values


def save_ranking(path: Path, ranking: torch.Tensor, events: torch.Tensor) -> None:
    """Write a ranking (least forgotten first) and the event counts as JSON, atomically."""
    atomic_write_text(Path(path), json.dumps({
        "format": "mest-forgetting-ranking", "num_examples": len(ranking),
        "ranking": ranking.tolist(), "events": events.tolist(),
    }))


def read_ranking(path: Path) -> list[int]:
    """Read a ranking written by :func:`save_ranking`: distinct example indices, least forgotten first.

    Raises
    ------
    ConfigError
        The file is unreadable, not a ranking, or lists a float, a negative or a repeated index.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"cannot read forgetting ranking {path}: {str(err)[:120]}") from None
    if not (isinstance(data, dict) and data.get("format") == "mest-forgetting-ranking"
            and isinstance(data.get("ranking"), list)):
        raise ConfigError(f"{path} is not a forgetting ranking (a ranking written by mest.train)")
    ranking = data["ranking"]
    wrong = [v for v in ranking if type(v) is not int or v < 0]  # a list: the wrong value may be null itself
    if wrong:
        raise ConfigError(f"forgetting ranking {path} lists {wrong[0]!r}, which is not an example index")
    if len(set(ranking)) != len(ranking):
        raise ConfigError(f"forgetting ranking {path} lists {len(ranking) - len(set(ranking))} examples more than once")
    return ranking


def check_ranking(ranking: list[int], num_examples: int, path: Path) -> torch.Tensor:
    """``ranking`` (from :func:`read_ranking`) as a tensor, if it ranks exactly ``num_examples`` examples."""
    if len(ranking) != num_examples:
        raise ConfigError(f"forgetting ranking {path} ranks {len(ranking)} examples, "
                          f"the training set has {num_examples}")
    beyond = next((v for v in ranking if v >= num_examples), None)
    if beyond is not None:
        raise ConfigError(f"forgetting ranking {path} lists example {beyond}, outside 0..{num_examples - 1}")
    return torch.tensor(ranking, dtype=torch.int64)
