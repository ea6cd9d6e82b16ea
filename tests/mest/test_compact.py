"""The tvm backend: compact training follows the torch-mask trajectory; its checkpoints resume exactly."""

from __future__ import annotations

import pytest
import torch

from mest.checkpoint import load_checkpoint
from mest.compact import CompactConv
from mest.data import Dataset, Split
from mest.trainer import Trainer

pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def even_digits(small_digits) -> Dataset:
    """128 training examples (4 batches of 32) and 64 test examples: few kernel shapes to build."""
    return Dataset("digits", Split(small_digits.train.images[:128], small_digits.train.labels[:128]),
                   Split(small_digits.test.images[:64], small_digits.test.labels[:64]),
                   small_digits.num_classes, small_digits.crop_padding, small_digits.horizontal_flip)


@pytest.mark.parametrize("scheme", ["irregular", "block", "pattern", "channel"])
def test_tvm_backend_follows_the_masked_trajectory(even_digits, tiny_config, tmp_path, scheme):
    # Three mutation windows (epochs 0, 1, 2 each mutate); EM&S so the capacity changes too.
    config = tiny_config.override(scheme=scheme, epochs=3, remove_epoch=None)
    runs = {}
    for backend in ("torch-mask", "tvm"):
        trainer = Trainer(config.override(backend=backend), tmp_path / backend, dataset=even_digits, progress=False)
        trace = []
        for _ in range(config.epochs):
            metrics = trainer.run_epoch()
            trace.append((metrics["train_loss"], {k: m.clone() for k, m in trainer.sparse.masks.items()}))
        runs[backend] = (trainer, trace)
    compact, _ = runs["tvm"]
    assert all(isinstance(layer, CompactConv) for layer in compact.sparse.layers.values())
    assert not any(name.endswith("conv1.weight") and "layer" in name for name, _ in compact.model.named_parameters())
    for (loss_mask, masks_mask), (loss_tvm, masks_tvm) in zip(runs["torch-mask"][1], runs["tvm"][1]):
        assert loss_tvm == pytest.approx(loss_mask, rel=1e-4, abs=1e-5)
        for fqn, mask in masks_mask.items():
            assert torch.equal(mask, masks_tvm[fqn]), f"masks differ at {fqn}"
    held, dense = compact.sparse.state_bytes()
    assert held < 0.5 * dense


def test_tvm_checkpoint_resumes_exactly_and_loads_as_dense(even_digits, tiny_config, tmp_path):
    config = tiny_config.override(epochs=2, remove_epoch=None, backend="tvm")
    straight = Trainer(config, tmp_path / "straight", dataset=even_digits, progress=False)
    straight.run_epoch()
    straight.run_epoch()
    first = Trainer(config, tmp_path / "split", dataset=even_digits, progress=False)
    first.run_epoch()
    checkpoint = load_checkpoint(tmp_path / "split")
    assert all(not k.endswith(".values") for k in checkpoint.model_state), "checkpoints hold dense weights"
    resumed = Trainer.resume(checkpoint, dataset=even_digits, progress=False)
    resumed.run_epoch()
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    for key, value in a.state["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b.state["optimizer"]["state"][key]["momentum_buffer"])
    masked = Trainer.resume(b.__class__(b.path, b.config.override(backend="torch-mask"), b.model_spec, b.epoch, b.state),
                            dataset=even_digits, progress=False)
    for fqn, mask in masked.sparse.masks.items():
        assert torch.equal(mask, resumed.sparse.masks[fqn])


@pytest.mark.parametrize("scheme, sparsity", [("channel", 0.97), ("block", 0.999), ("irregular", 0.9999)])
def test_a_layer_keeps_one_unit_on_both_backends(even_digits, tiny_config, tmp_path, scheme, sparsity):
    # tiny's layers have 8 and 12 filters: 3% of them, 0.1% of their blocks, 0.01% of their
    # weights all round to none, which once emptied a layer (and crashed the tvm backend).
    config = tiny_config.override(scheme=scheme, sparsity=sparsity, schedule="em", epochs=2, remove_epoch=None)
    masks = {}
    for backend in ("torch-mask", "tvm"):
        trainer = Trainer(config.override(backend=backend), tmp_path / backend, dataset=even_digits, progress=False)
        for _ in range(config.epochs):
            metrics = trainer.run_epoch()
        assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
        masks[backend] = trainer.sparse.masks
    for fqn, mask in masks["torch-mask"].items():
        assert torch.equal(mask, masks["tvm"][fqn]), fqn
        if fqn in trainer.sparse.schemes:
            assert 0 < int(mask.sum()) <= {"channel": mask[0].numel(), "block": 4, "irregular": 1}[scheme]
