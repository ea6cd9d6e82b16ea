"""The compiled backend: one built step per batch follows the torch-mask trajectory; checkpoints resume
exactly and are interchangeable with the other backends'."""

from __future__ import annotations

import pytest
import torch

from mest.checkpoint import load_checkpoint
from mest.config import TrainConfig
from mest.data import Dataset, Split
from mest.trainer import Trainer

pytest.importorskip("tvm")

#: Two mutation windows (epochs 0 and 1 mutate; EM&S grows to more than it prunes to). The structure of
#: the kill -9 test's runs (tiny, batch 8, 90%, bounds stepping at 2 and 3), so that its subprocesses find
#: the irregular step built here in the module cache.
CONFIG = TrainConfig(model="tiny", epochs=2, update_freq=1, decay_epochs=(2, 3), batch_size=8, remove_epoch=None,
                     sparsity=0.9, schedule="ems", backend="compiled")


@pytest.fixture(scope="module")
def odd_digits(small_digits) -> Dataset:
    """124 training and 60 test examples: the last batch of each is short (padded to the built batch)."""
    return Dataset("digits", Split(small_digits.train.images[:124], small_digits.train.labels[:124]),
                   Split(small_digits.test.images[:60], small_digits.test.labels[:60]),
                   small_digits.num_classes, small_digits.crop_padding, small_digits.horizontal_flip)


def _trace(config: TrainConfig, data: Dataset, out) -> tuple[Trainer, list]:
    trainer = Trainer(config, out, dataset=data, progress=False)
    trace = []
    for _ in range(config.epochs):
        metrics = trainer.run_epoch()
        trace.append((metrics, {k: m.clone() for k, m in trainer.sparse.masks.items()}))
    return trainer, trace


@pytest.mark.parametrize("scheme", ["irregular", "block", "pattern", "channel"])
def test_compiled_backend_follows_the_masked_trajectory(odd_digits, tmp_path, scheme):
    config = CONFIG.override(scheme=scheme)
    _, masked = _trace(config.override(backend="torch-mask"), odd_digits, tmp_path / "mask")
    compiled, trace = _trace(config, odd_digits, tmp_path / "compiled")
    for (m_mask, masks_mask), (m_compiled, masks_compiled) in zip(masked, trace):
        for key in ("train_loss", "test_loss"):
            assert m_compiled[key] == pytest.approx(m_mask[key], rel=1e-4), key
        assert m_compiled["train_acc"] == m_mask["train_acc"] and m_compiled["test_acc"] == m_mask["test_acc"]
        for fqn, mask in masks_mask.items():
            assert torch.equal(mask, masks_compiled[fqn]), f"masks differ at {fqn}"
    assert compiled.compiled.builds <= 1, "a mutation within the run's capacity must not rebuild"
    assert trace[0][0]["kernel_build_seconds"] > 0 and trace[1][0]["kernel_build_seconds"] == 0
    assert not any("conv1.weight" in name and "layer" in name for name, _ in compiled.model.named_parameters())
    held, dense = compiled.sparse.state_bytes()
    assert held < 0.5 * dense


def test_compiled_checkpoint_resumes_exactly_and_is_interchangeable(odd_digits, tmp_path):
    straight = Trainer(CONFIG, tmp_path / "straight", dataset=odd_digits, progress=False)
    straight.run_epoch()
    straight.run_epoch()
    split = Trainer(CONFIG, tmp_path / "split", dataset=odd_digits, progress=False)
    split.run_epoch()
    checkpoint = load_checkpoint(tmp_path / "split")
    assert all(not k.endswith(".values") for k in checkpoint.model_state), "checkpoints hold dense weights"
    Trainer.resume(checkpoint, dataset=odd_digits, progress=False).run_epoch()
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    for key, value in a.state["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b.state["optimizer"]["state"][key]["momentum_buffer"])

    # The same checkpoint continued by torch-mask, and a torch-mask checkpoint continued compiled.
    as_masked = checkpoint.__class__(checkpoint.path, checkpoint.config.override(backend="torch-mask"),
                                     checkpoint.model_spec, checkpoint.epoch, checkpoint.state)
    masked = Trainer.resume(as_masked, dataset=odd_digits, progress=False)
    masked_metrics = masked.run_epoch()
    assert masked_metrics["train_loss"] == pytest.approx(a.state["history"][1]["train_loss"], rel=1e-4)
    for fqn, mask in masked.sparse.masks.items():
        assert torch.equal(mask, a.masks[fqn])
    masked_checkpoint = load_checkpoint(masked.out_dir)
    back = masked_checkpoint.__class__(masked_checkpoint.path, masked_checkpoint.config.override(backend="compiled"),
                                       masked_checkpoint.model_spec, masked_checkpoint.epoch, masked_checkpoint.state)
    resumed = Trainer.resume(back, dataset=odd_digits, progress=False)
    for key, value in masked_checkpoint.model_state.items():
        assert torch.equal(value, resumed.state()["model"][key]), key
