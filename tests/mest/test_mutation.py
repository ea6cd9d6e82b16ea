"""EM and EM&S: the density between mutations and the swap per mutation follow the reference tables."""

from __future__ import annotations

import pytest
import torch

from mest.models import build_model
from mest.mutation import MutationSchedule
from mest.sparsity import SparseState, default_profile

# (schedule, target sparsity) -> per phase: (sparsity pruned to, sparsity grown to), from the notes.
TABLES = {
    ("em", 0.90): [(0.92, 0.90), (0.91, 0.90), (0.90, 0.90)],
    ("em", 0.95): [(0.96, 0.95), (0.955, 0.95), (0.95, 0.95)],
    ("ems", 0.90): [(0.90, 0.85), (0.90, 0.875), (0.90, 0.90)],
    ("ems", 0.95): [(0.95, 0.90), (0.95, 0.925), (0.95, 0.95)],
}
PHASE_EPOCHS = (0, 90, 120)


@pytest.mark.parametrize("kind, sparsity", list(TABLES))
def test_bounds_match_the_reference_tables(kind, sparsity):
    schedule = MutationSchedule(kind, sparsity, update_freq=5, decay_epochs=(90, 120))
    for epoch, (pruned_to, grown_to) in zip(PHASE_EPOCHS, TABLES[kind, sparsity]):
        bounds = schedule.bounds(epoch)
        assert 1 - bounds.lower == pytest.approx(pruned_to)
        assert 1 - bounds.upper == pytest.approx(grown_to)


@pytest.mark.parametrize("kind, sparsity", list(TABLES))
def test_layer_density_between_mutations_follows_the_table(kind, sparsity):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3)
    state = SparseState.prune_init(model, default_profile(model, sparsity), "irregular")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = MutationSchedule(kind, sparsity, update_freq=5, decay_epochs=(90, 120))
    params = dict(model.named_parameters())
    for epoch, (pruned_to, grown_to) in zip(PHASE_EPOCHS, TABLES[kind, sparsity]):
        with torch.no_grad():  # the surviving weights are non-zero, as after training
            for fqn, mask in state.masks.items():
                params[fqn].add_(torch.randn_like(params[fqn]) * mask)
        before = {fqn: m.clone() for fqn, m in state.masks.items()}
        records = state.mutate(model, optimizer, schedule, epoch, seed=0)
        for fqn, mask in state.masks.items():
            numel = mask.numel()
            assert mask.float().mean().item() == pytest.approx(1 - grown_to, abs=1.0 / numel)
            survivors = int((params[fqn] != 0).sum())
            assert survivors == pytest.approx((1 - pruned_to) * numel, abs=1.0)
            assert int(mask.sum()) - survivors == records[fqn].grown, "grown weights must start at zero"
            assert records[fqn].pruned == int(before[fqn].sum()) - survivors
            assert bool((params[fqn][~mask] == 0).all())
            assert records[fqn].density == pytest.approx(1 - grown_to, abs=1.0 / numel)


def test_mutation_epochs_include_zero():
    schedule = MutationSchedule("em", 0.9, update_freq=5, decay_epochs=(90, 120))
    assert [e for e in range(12) if schedule.is_mutation_epoch(e)] == [0, 5, 10]
