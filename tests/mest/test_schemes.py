"""Prune and grow of every scheme: exact densities, structure invariants, reproducibility, refusals."""

from __future__ import annotations

import pytest
import torch

from mest.errors import SchemeError
from mest.schemes import SCHEMES, derived_generator, get_scheme
from mest.schemes.pattern import kernels_per_filter
from schedules.schemes.pattern import pattern_ids

SHAPES = [(16, 12, 3, 3), (32, 17, 3, 3), (8, 5, 3, 3)]


def unit_count(scheme: str, mask: torch.Tensor) -> int:
    """How many units (the scheme's own) a mask keeps."""
    if scheme == "irregular":
        return int(mask.sum())
    if scheme == "block":
        return int(mask.reshape(mask.shape[0] // 4, 4, -1).any(dim=1).sum())
    if scheme == "pattern":
        return int(mask.reshape(*mask.shape[:2], 9).any(dim=-1).sum())
    return int(mask.reshape(mask.shape[0], -1).any(dim=1).sum())


def total_units(scheme: str, shape: tuple[int, ...]) -> int:
    out, inp = shape[:2]
    return {"irregular": out * inp * 9, "block": out // 4 * inp * 9, "pattern": out * inp, "channel": out}[scheme]


def expected_units(scheme: str, shape: tuple[int, ...], density: float) -> int:
    if scheme == "pattern":
        return shape[0] * kernels_per_filter(shape[1], density)
    return max(1, round(density * total_units(scheme, shape)))  # never an empty layer


def check_structure(scheme: str, mask: torch.Tensor) -> None:
    if scheme == "block":
        blocks = mask.reshape(mask.shape[0] // 4, 4, -1)
        assert torch.equal(blocks.all(dim=1), blocks.any(dim=1)), "a 4x1 block is partly kept"
    elif scheme == "pattern":
        kept = mask.reshape(*mask.shape[:2], 9).any(dim=-1)
        assert bool((pattern_ids(mask)[kept] >= 0).all()), "a kept kernel is not one of the 8 patterns"
        per_filter = kept.sum(dim=1)
        assert bool((per_filter == per_filter[0]).all()), "filters keep different kernel counts"
    elif scheme == "channel":
        filters = mask.reshape(mask.shape[0], -1)
        assert torch.equal(filters.all(dim=1), filters.any(dim=1)), "a filter is partly kept"


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.1, 0.05, 0.3])
def test_prune_then_grow_reach_exact_density_with_structure(scheme, shape, density):
    if scheme == "block" and shape[0] % 4:
        pytest.skip("block needs out_channels % 4 == 0")
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    rule = get_scheme(scheme)
    full = torch.ones(shape, dtype=torch.bool)
    mask = rule.prune(weight.abs(), full, density)
    assert unit_count(scheme, mask) == expected_units(scheme, shape, density)
    check_structure(scheme, mask)
    lower = rule.prune(weight.abs(), mask, density * 0.8)
    assert unit_count(scheme, lower) == expected_units(scheme, shape, density * 0.8)
    assert not bool((lower & ~mask).any()), "pruning opened new positions"
    grown = rule.grow(lower, density, derived_generator(0, 5, "layer"))
    assert unit_count(scheme, grown) == expected_units(scheme, shape, density)
    assert not bool((lower & ~grown).any()), "growth dropped kept positions"
    check_structure(scheme, grown)
    again = rule.grow(lower, density, derived_generator(0, 5, "layer"))
    assert torch.equal(grown, again), "growth is not reproducible from (seed, epoch, layer)"
    other = rule.grow(lower, density, derived_generator(0, 6, "layer"))
    if unit_count(scheme, grown) > unit_count(scheme, lower):
        assert not torch.equal(grown, other) or total_units(scheme, shape) < 20


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_prune_keeps_the_largest_units(scheme):
    shape = (8, 4, 3, 3)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 0.01
    weight[0:4, 1] = 10.0  # one clearly dominant unit in every scheme's view
    mask = get_scheme(scheme).prune(weight.abs(), torch.ones(shape, dtype=torch.bool), 0.1)
    assert bool(mask[0, 1].any())


def test_pattern_picks_the_best_shape():
    weight = torch.zeros(4, 2, 3, 3)
    weight[:, :, 0, 0:2] = 1.0
    weight[:, :, 1, 0:2] = 1.0  # exactly pattern 3: XX.|XX.|...
    mask = get_scheme("pattern").prune(weight.abs() + 1e-3, torch.ones_like(weight, dtype=torch.bool), 4 / 9 * 0.5)
    kept = mask.reshape(4, 2, 9).any(dim=-1)
    assert bool((pattern_ids(mask)[kept] == 3).all())


@pytest.mark.parametrize(
    "scheme, shape, density, message",
    [
        ("irregular", (8, 4, 3, 3), 0.0, "outside [0, 1)"),
        ("irregular", (8, 4, 3, 3), 1.5, "outside [0, 1)"),
        ("block", (6, 4, 3, 3), 0.1, "divisible by 4"),
        ("pattern", (8, 4, 1, 1), 0.1, "3x3"),
        ("pattern", (8, 4, 3, 3), 0.5, "at most 4 of 9"),
        ("channel", (8, 4), 0.1, "4-d conv weight"),
    ],
)
def test_refusals_are_one_line(scheme, shape, density, message):
    with pytest.raises(SchemeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as err:
        get_scheme(scheme).prune(torch.ones(shape), torch.ones(shape, dtype=torch.bool), density)
    assert "\n" not in str(err.value)


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(SchemeError, match="irregular, block, pattern, channel"):
        get_scheme("diagonal")


def test_every_scheme_spec_has_its_prune_and_grow():
    from schedules.schemes import SCHEME_SPECS

    assert list(SCHEMES) == list(SCHEME_SPECS)
    assert all(SCHEMES[name].spec is spec for name, spec in SCHEME_SPECS.items())


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_a_density_that_rounds_to_no_unit_keeps_one(scheme):
    # a 40->24 layer at 2% of its weights: fewer than half a filter, a kernel of each filter, ...
    shape = (24, 40, 3, 3)
    rule = get_scheme(scheme)
    density = 0.5 / rule.spec.unit_count(shape)  # rounds to 0 units (pattern: 0 kernels per filter)
    full = torch.ones(shape, dtype=torch.bool)
    pruned = rule.prune(torch.rand(shape, generator=torch.Generator().manual_seed(1)) + 0.1, full, density)
    grown = rule.grow(torch.zeros(shape, dtype=torch.bool), density, torch.Generator().manual_seed(2))
    least_kept = {"irregular": 1, "block": 4, "pattern": 4 * 24, "channel": 40 * 9}[scheme]
    assert int(pruned.sum()) == least_kept and int(grown.sum()) == least_kept
    assert rule.spec.unit_count(shape) == total_units(scheme, shape)
