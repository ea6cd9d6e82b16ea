"""The training loop: masks hold through steps and mutations, removal, checkpoints, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from mest.checkpoint import load_checkpoint
from mest.data import load_dataset
from mest.rundir import LOCK_NAME
from mest.trainer import METRICS_NAME, PLOT_NAME, RANKING_NAME, Trainer


def nonzero_outside_mask(trainer: Trainer) -> int:
    params = dict(trainer.model.named_parameters())
    return sum(int((params[fqn] != 0)[~mask].sum()) for fqn, mask in trainer.sparse.masks.items())


@pytest.mark.parametrize("scheme", ["irregular", "block", "pattern", "channel"])
def test_no_weight_outside_the_mask_after_any_step(small_digits, tiny_config, tmp_path, scheme):
    config = tiny_config.override(scheme=scheme, epochs=3, remove_epoch=None)
    trainer = Trainer(config, tmp_path, dataset=small_digits, progress=False)
    assert nonzero_outside_mask(trainer) == 0
    for _ in range(config.epochs):
        trainer.run_epoch()
        assert nonzero_outside_mask(trainer) == 0
        for fqn, mask in trainer.sparse.masks.items():
            param = dict(trainer.model.named_parameters())[fqn]
            buf = trainer.optimizer.state[param]["momentum_buffer"]
            assert int((buf != 0)[~mask].sum()) == 0, f"momentum outside the mask of {fqn}"
    density = trainer.history[-1]["density"]
    # tiny layers have 8 or 12 filters: one unit of the channel scheme is up to 1/8 of a layer
    assert density == pytest.approx(1 - config.sparsity, abs=0.125)
    if scheme == "channel":
        assert trainer.sparse.coupled, "channel sparsity must mask the BN channels too"


def test_removal_epoch_drops_the_least_forgotten(small_digits, tiny_config, tmp_path):
    trainer = Trainer(tiny_config.override(epochs=3), tmp_path, dataset=small_digits, progress=False)
    trainer.run_epoch()
    trainer.run_epoch()
    expected = torch.sort(trainer.forgetting.ranking()[: tiny_config.remove_count]).values
    trainer.run_epoch()  # epoch 2 is the removal epoch
    assert len(trainer.kept_examples) == len(small_digits.train) - tiny_config.remove_count
    assert not bool(torch.isin(trainer.kept_examples, expected).any())
    assert trainer.history[-1]["examples"] == len(trainer.kept_examples)
    saved = json.loads((tmp_path / RANKING_NAME).read_text())

    reloaded = Trainer(tiny_config.override(epochs=3, ranking_in=str(tmp_path / RANKING_NAME)),
                       tmp_path / "second", dataset=small_digits, progress=False)
    reloaded.epoch = 2
    reloaded.remove_unforgettable()
    assert torch.equal(reloaded.kept_examples, trainer.kept_examples)
    assert saved["num_examples"] == len(small_digits.train)


def test_checkpoint_round_trip_restores_everything(small_digits, tiny_config, tmp_path):
    config = tiny_config.override(epochs=2)
    trainer = Trainer(config, tmp_path, dataset=small_digits, progress=False)
    trainer.run_epoch()
    resumed = Trainer.resume(load_checkpoint(tmp_path), dataset=small_digits, progress=False)
    assert resumed.epoch == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for fqn, mask in trainer.sparse.masks.items():
        assert torch.equal(mask, resumed.sparse.masks[fqn])
    trainer.run_epoch()
    resumed.run_epoch()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_run_writes_metrics_plot_and_checkpoint(small_digits, tiny_config, tmp_path):
    Trainer(tiny_config.override(epochs=2), tmp_path, dataset=small_digits, progress=False).run()
    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert (tmp_path / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(tmp_path).epoch == 2


def test_kill_9_between_metrics_and_checkpoint_then_resume_agrees(tmp_path):
    # A real process is killed with SIGKILL in the middle of writing epoch 1's checkpoint: after
    # epoch 1's metrics line, with a half-written checkpoint temporary beside the epoch-0 checkpoint.
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import mest.trainer
        from devices.files import atomic_write
        from mest.cli import run_main
        from mest.train import main

        saves = []
        keep = mest.trainer.save_checkpoint

        def save_checkpoint(path, state):
            saves.append(path)
            if len(saves) == 2:
                def half_then_killed(handle):
                    handle.write(b"PK half a checkpoint")
                    handle.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                atomic_write(path, half_then_killed)
            keep(path, state)

        mest.trainer.save_checkpoint = save_checkpoint
        sys.exit(run_main(main, ["--model", "tiny", "--backend", "torch-mask", "--epochs", "3", "--no-progress",
                                 "--remove-epoch", "9", "--out", {str(run)!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert load_checkpoint(run).epoch == 1
    assert [json.loads(line)["epoch"] for line in (run / METRICS_NAME).read_text().splitlines()] == [0, 1]
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "the kill left no temporary"

    # the run trained on the whole digits set: resume on it (a checkpoint does not resume on other data);
    # the killed run's run.lock stays, stale (the OS released the lock; the next holder replaces it)
    trainer = Trainer.resume(load_checkpoint(run), dataset=load_dataset("digits"), progress=False)
    trainer.tidy_run_dir()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", METRICS_NAME, LOCK_NAME]
    lines = (run / METRICS_NAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == load_checkpoint(run).state["history"]
    assert [json.loads(line)["epoch"] for line in lines] == [0]
