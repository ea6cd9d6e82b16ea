"""Forgetting statistics on hand-made outcomes; removal; a saved ranking removes the same examples."""

from __future__ import annotations

import math

import pytest
import torch

from mest.errors import ConfigError
from mest.forgetting import ForgettingStats, load_ranking, save_ranking, unforgettable


def test_hand_made_sequence_counts_events():
    stats = ForgettingStats.empty(4)
    outcomes = [  # presentations of examples 0..3
        [True, False, True, False],
        [False, False, True, False],
        [True, False, False, False],
        [False, False, True, False],
        [True, True, True, False],
    ]
    for row in outcomes:
        stats.update(torch.arange(4), torch.tensor(row))
    # example 0: T F T F T -> 2 events; 1: learned at the end, 0; 2: T T F T T -> 1; 3: never learned
    assert stats.events.tolist() == [2, 0, 1, 0]
    assert stats.scores().tolist() == [2.0, 0.0, 1.0, math.inf]
    assert stats.ranking().tolist() == [1, 2, 0, 3]


def test_partial_batches_only_touch_their_examples():
    stats = ForgettingStats.empty(5)
    stats.update(torch.tensor([4, 1]), torch.tensor([True, True]))
    stats.update(torch.tensor([1]), torch.tensor([False]))
    assert stats.events.tolist() == [0, 1, 0, 0, 0]
    assert stats.learned.tolist() == [False, True, False, False, True]


def test_removal_and_reloaded_ranking_remove_the_same(tmp_path):
    stats = ForgettingStats.empty(6)
    for row in ([True] * 6, [False, True, False, True, True, True], [True] * 6):
        stats.update(torch.arange(6), torch.tensor(row))
    ranking = stats.ranking()
    removed = unforgettable(ranking, 3)
    assert removed.tolist() == [1, 3, 4]
    path = tmp_path / "ranking.json"
    save_ranking(path, ranking, stats.events)
    assert torch.equal(unforgettable(load_ranking(path, 6), 3), removed)


def test_foreign_ranking_is_refused(tmp_path):
    path = tmp_path / "ranking.json"
    save_ranking(path, torch.tensor([0, 1, 2]), torch.zeros(3))
    with pytest.raises(ConfigError, match="not a ranking of this training set"):
        load_ranking(path, 5)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read forgetting ranking"):
        load_ranking(path, 3)
