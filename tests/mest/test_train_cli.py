"""``python -m mest.train``: bad input is one line on stderr with exit code 2; kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mest.checkpoint import load_checkpoint
from mest.cli import run_main
from mest.train import main

FAST = ["--model", "tiny", "--no-progress"]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = run_main(main, argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sparsity", "1.0"], "sparsity 1 is outside [0, 1)"),
        (["--sparsity", "-0.1"], "outside [0, 1)"),
        (["--preset", "resnet99-mnist"], "unknown preset 'resnet99-mnist'"),
        (["--scheme", "diagonal"], "unknown scheme 'diagonal'"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "data directory does not exist"),
        (["--dataset", "cifar10"], "cifar10 needs --data-dir"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys, tmp_path):
    code, err = run_cli(argv + FAST + ["--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_layer_the_scheme_cannot_take_is_refused(capsys, tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"layer2.0.shortcut.0.weight": 0.9}))
    code, err = run_cli(FAST + ["--scheme", "pattern", "--profile", str(profile), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "pattern sparsity needs a 3x3 conv" in err
    # No model here has a conv with out_channels % 4 != 0 (block's refusal of those is a scheme
    # test); the classifier is not a conv at all.
    profile.write_text(json.dumps({"linear.weight": 0.9}))
    code, err = run_cli(FAST + ["--scheme", "block", "--profile", str(profile), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "block sparsity needs a 4-d conv weight" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_cifar_batch_is_named(capsys, tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"")
    code, err = run_cli(FAST + ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "data_batch_1" in err


def test_corrupt_checkpoint_is_refused_and_kept(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    code, err = run_cli(["--resume", str(run)], capsys)
    assert code == 2 and "truncated or not a torch file" in err and err.count("\n") == 1
    assert ckpt.read_bytes() == b"PK\x03\x04 truncated"
    torch.save({"weights": torch.zeros(1)}, ckpt)
    before = ckpt.read_bytes()
    code, err = run_cli(["--resume", str(ckpt)], capsys)
    assert code == 2 and "not a mest-tvm checkpoint" in err
    assert ckpt.read_bytes() == before
    code, err = run_cli(FAST + ["--out", str(run)], capsys)
    assert code == 2 and "already holds a checkpoint" in err
    assert ckpt.read_bytes() == before


def _train_command(out: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "mest.train", *FAST, "--backend", backend, "--epochs", "4", "--batch-size", "8",
            "--update-freq", "1", "--decay-epochs", "2-3", "--remove-epoch", "2", "--remove-count", "100",
            "--out", str(out)]


@pytest.mark.parametrize("backend", ["torch-mask", "tvm", "compiled"])
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, backend):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_command(tmp_path / "straight", backend), check=True, env=env, capture_output=True, timeout=300)

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(killed_dir, backend), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 3 (of 180 steps), after epoch 2's checkpoint
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    interrupted_at = load_checkpoint(killed_dir).epoch
    assert interrupted_at < 4
    subprocess.run([sys.executable, "-m", "mest.train", "--resume", str(killed_dir), "--no-progress"],
                   check=True, env=env, capture_output=True, timeout=300)

    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(killed_dir)
    assert resumed.epoch == straight.epoch == 4
    for key, value in straight.model_state.items():
        assert torch.equal(value, resumed.model_state[key]), key
    for fqn, mask in straight.masks.items():
        assert torch.equal(mask, resumed.masks[fqn]), fqn
    assert torch.equal(straight.state["kept_examples"], resumed.state["kept_examples"])
