"""Forgetting statistics on hand-made outcomes; removal; a saved ranking removes the same examples;
a ranking file that is not one is refused (hand-made cases, and random bytes)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mest.errors import ConfigError
from mest.forgetting import (ForgettingStats, check_ranking, check_remove_count, read_ranking, save_ranking,
                             unforgettable)


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
    assert torch.equal(unforgettable(check_ranking(read_ranking(path), 6, path), 3), removed)


def _ranking_file(path, ranking) -> None:
    path.write_text(json.dumps({"format": "mest-forgetting-ranking", "num_examples": len(ranking), "ranking": ranking}))


@pytest.mark.parametrize("ranking, message", [
    ([0, 1.0, 2], "lists 1.0, which is not an example index"),
    ([0, 1.5, 2], "lists 1.5"),
    ([0, True, 2], "lists True"),
    ([0, -1, 2], "lists -1"),
    ([0, "1", 2], "lists '1'"),
    ([0, 1, 1], "lists 1 examples more than once"),
])
def test_a_ranking_of_other_than_distinct_indices_is_refused(tmp_path, ranking, message):
    path = tmp_path / "ranking.json"
    _ranking_file(path, ranking)
    with pytest.raises(ConfigError, match=message):
        read_ranking(path)


@pytest.mark.parametrize("ranking, message", [
    ([0, 1, 2], "ranks 3 examples, the training set has 5"),
    ([0, 1, 2, 3, 7], "lists example 7, outside 0..4"),
    ([0, 1, 2, 3, 2**70], "lists example 1180591620717411303424, outside"),
])
def test_a_ranking_of_another_training_set_is_refused(tmp_path, ranking, message):
    path = tmp_path / "ranking.json"
    _ranking_file(path, ranking)
    with pytest.raises(ConfigError, match=message):
        check_ranking(read_ranking(path), 5, path)


@pytest.mark.parametrize("content", ["{not json", "[0, 1, 2]", '{"format": "mest-forgetting-ranking"}',
                                     '{"ranking": [0, 1]}', "[" * 100_000])
def test_a_file_that_is_no_ranking_is_refused(tmp_path, content):
    path = tmp_path / "ranking.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="forgetting ranking"):
        read_ranking(path)


def test_removing_every_example_is_refused():
    check_remove_count(4, 5)
    for count in (5, 6, -1):
        with pytest.raises(ConfigError, match="would leave no training example of 5"):
            check_remove_count(count, 5)


@settings(max_examples=50, deadline=None)
@given(content=st.one_of(st.binary(max_size=300), st.builds(
    lambda items: json.dumps({"format": "mest-forgetting-ranking", "ranking": items}).encode(),
    st.lists(st.one_of(st.integers(-3, 2**65), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=3)),
             max_size=8))))
def test_random_bytes_as_a_ranking_raise_only_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("ranking") / "ranking.json"
    path.write_bytes(content)
    try:
        check_ranking(read_ranking(path), 6, path)
    except ConfigError as err:
        assert "\n" not in str(err)


def test_a_null_in_a_ranking_is_refused_as_no_example_index(tmp_path):
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({"format": "mest-forgetting-ranking", "ranking": [None, 0, 1, 2, 3, 4]}))
    with pytest.raises(ConfigError, match="lists None, which is not an example index"):
        read_ranking(path)
