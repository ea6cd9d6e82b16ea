"""TrainConfig refuses values that make no sense, whoever builds it (CLI flags, a checkpoint, a test)."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from mest.config import PRESETS, TrainConfig
from mest.errors import ConfigError

FLOAT_FIELDS = [f.name for f in fields(TrainConfig) if f.type == "float"]


def test_the_float_fields_are_the_ones_checked():
    assert FLOAT_FIELDS == ["sparsity", "lr", "momentum", "weight_decay", "grad_weight"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_field_must_be_finite(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be a finite number|sparsity {value} is outside"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize("changes, message", [
    ({"lr": 0.0}, "lr must be positive, got 0"),
    ({"lr": -0.1}, "lr must be positive, got -0.1"),
    ({"momentum": -0.5}, "momentum must be in [0, 1), got -0.5"),
    ({"momentum": 1.0}, "momentum must be in [0, 1), got 1"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"grad_weight": -1.0}, "grad_weight must be >= 0"),
    ({"remove_count": -1}, "remove_count must be >= 0"),
    ({"remove_epoch": -1}, "remove_epoch must be >= 0"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": -8}, "batch_size must be >= 1, got -8"),
    ({"update_freq": 0}, "update_freq must be >= 1"),
    ({"seed": 2**32}, "seed must be in [0, 2**32)"),
    ({"seed": -1}, "seed must be in [0, 2**32)"),
    ({"data_dir": "/data/cifar"}, "data_dir is for cifar10 and cifar100"),
    ({"ranking_in": "r.json", "remove_count": 0}, "ranking_in has no effect: this run removes no example"),
    ({"ranking_in": "r.json", "remove_epoch": 30}, "remove_epoch 30 of 30 epochs"),
    ({"ranking_in": "r.json", "remove_epoch": None}, "ranking_in has no effect"),
    ({"decay_epochs": (5,)}, "decay_epochs must be two increasing epochs"),
    ({"decay_epochs": (9, 3)}, "decay_epochs must be two increasing epochs"),
    ({"lr": "0.1"}, "lr must be float, got '0.1'"),
    ({"epochs": 2.0}, "epochs must be int, got 2.0"),
    ({"epochs": True}, "epochs must be int, got True"),
    ({"model": None}, "model must be str, got None"),
    ({"data_dir": 3}, "data_dir must be str or None, got 3"),
    ({"decay_epochs": ["a", "b"]}, "decay_epochs must be tuple[int, ...]"),
    ({"backend": "cuda"}, "unknown backend 'cuda'"),
])
def test_values_that_make_no_sense_are_refused(changes, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**changes)
    assert message in str(err.value)


def test_sound_values_pass_and_ints_are_floats_where_a_float_is_meant():
    config = TrainConfig(lr=1, momentum=0, weight_decay=0, decay_epochs=[3, 5], seed=2**32 - 1)
    assert config.lr == 1.0 and type(config.lr) is float and config.decay_epochs == (3, 5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert all(TrainConfig.from_dict(p.to_dict()) == p for p in PRESETS.values())
