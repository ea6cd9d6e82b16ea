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

from cli_checks import assert_one_error_line, snapshot

from mest.checkpoint import load_checkpoint
from mest.cli import run_main
from mest.config import TrainConfig
from mest.train import build_parser, main
from mest.trainer import Trainer

FAST = ["--model", "tiny", "--no-progress"]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = run_main(main, argv)
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    return code, capsys.readouterr().err


DIGITS_TRAIN = 1437  # training examples of the digits split
RANKING = {"format": "mest-forgetting-ranking", "num_examples": DIGITS_TRAIN}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, small_digits) -> Path:
    """Files a user may hand to mest.train by mistake, and a finished run (one epoch)."""
    inputs = tmp_path_factory.mktemp("in")
    files = {
        "empty-profile.json": {}, "list-profile.json": [0.9], "nan-profile.json": {"layer1.0.conv1.weight": float("nan")},
        "foreign-profile.json": {"fc.weight": 0.9},
        "float-ranking.json": {**RANKING, "ranking": [float(i) for i in range(DIGITS_TRAIN)]},
        "short-ranking.json": {**RANKING, "ranking": list(range(10))},
        "twice-ranking.json": {**RANKING, "ranking": [0] + list(range(DIGITS_TRAIN - 1))},
        "beyond-ranking.json": {**RANKING, "ranking": list(range(DIGITS_TRAIN - 1)) + [5000]},
    }
    for name, content in files.items():
        (inputs / name).write_text(json.dumps(content))
    (inputs / "notes.txt").write_text("not a checkpoint\n")
    (inputs / "dup-profile.json").write_text('{"layer1.0.conv1.weight": 0.5, "layer1.0.conv1.weight": 0.7}')
    config = TrainConfig(model="tiny", epochs=1, batch_size=32, remove_epoch=None, backend="torch-mask")
    Trainer(config, inputs / "finished", dataset=small_digits, progress=False).run()
    return inputs


#: Bad command lines of mest.train ({in} = the bad_inputs folder, {out} = a run directory not yet made)
#: and the words their one-line error must hold.
BAD_TRAIN_ARGS = [
    ("--sparsity 1.0", "sparsity 1 is outside [0, 1)"), ("--sparsity -0.1", "outside [0, 1)"),
    ("--sparsity nan", "sparsity must be a finite number"), ("--sparsity inf", "sparsity must be a finite number"),
    ("--lr nan", "lr must be a finite number, got nan"), ("--lr inf", "lr must be a finite number, got inf"),
    ("--lr=-inf", "lr must be a finite number"), ("--lr -0.1", "lr must be positive"), ("--lr 0", "lr must be positive"),
    ("--momentum nan", "momentum must be a finite number"), ("--momentum -0.5", "momentum must be in [0, 1)"),
    ("--momentum 1", "momentum must be in [0, 1)"), ("--weight-decay inf", "weight_decay must be a finite number"),
    ("--weight-decay=-1e-4", "weight_decay must be >= 0"), ("--grad-weight nan", "grad_weight must be a finite number"),
    ("--grad-weight -1", "grad_weight must be >= 0"), ("--epochs 0", "epochs must be >= 1"),
    ("--batch-size 0", "batch_size must be >= 1"), ("--update-freq 0", "update_freq must be >= 1"),
    ("--remove-count -1", "remove_count must be >= 0"), ("--remove-epoch -1", "remove_epoch must be >= 0"),
    ("--seed 4294967296", "seed must be in [0, 2**32)"), ("--seed=-1", "seed must be in [0, 2**32)"),
    ("--batch-size 1438", "batch_size 1438 is larger than the training set (1437 examples)"),
    ("--data-dir {in}", "data_dir is for cifar10 and cifar100"),
    ("--ranking-in {in}/short-ranking.json --remove-count 0", "ranking_in has no effect"),
    ("--decay-epochs 5", "decay_epochs must be two increasing epochs"),
    ("--decay-epochs 9-3", "decay_epochs must be two increasing epochs"),
    ("--decay-epochs a-b", "expected epochs joined by '-'"), ("--lr abc", "invalid float value: 'abc'"),
    ("--epochs 1.5", "invalid int value: '1.5'"), ("--backend cuda", "invalid choice: 'cuda'"),
    ("--colour red", "unrecognized arguments: --colour red"),
    ("--preset resnet99-mnist", "unknown preset 'resnet99-mnist'"), ("--scheme diagonal", "unknown scheme 'diagonal'"),
    ("--schedule sometimes", "unknown mutation schedule 'sometimes'"), ("--model resnet99", "unknown model 'resnet99'"),
    ("--dataset mnist", "unknown dataset 'mnist'"), ("--dataset cifar10", "cifar10 needs --data-dir"),
    ("--dataset cifar10 --data-dir /nonexistent/cifar", "data directory does not exist"),
    ("--remove-epoch 0 --remove-count 1437", "remove_count 1437 would leave no training example of 1437"),
    ("--remove-epoch 0 --remove-count 100000", "would leave no training example"),
    ("--profile {in}/empty-profile.json", "names no layer: nothing would be sparse"),
    ("--profile {in}/list-profile.json", "must be a JSON object of FQN -> sparsity"),
    ("--profile {in}/nan-profile.json", "sparsity nan of layer1.0.conv1.weight"),
    ("--profile {in}/dup-profile.json", "names 'layer1.0.conv1.weight' twice"),
    ("--profile {in}/foreign-profile.json", "names 'fc.weight', which is not a parameter of the model"),
    ("--profile {in}/missing.json", "cannot read sparsity profile"),
    ("--profile {in}/notes.txt", "cannot read sparsity profile"),
    ("--ranking-in {in}/float-ranking.json", "lists 0.0, which is not an example index"),
    ("--ranking-in {in}/short-ranking.json", "ranks 10 examples, the training set has 1437"),
    ("--ranking-in {in}/twice-ranking.json", "lists 1 examples more than once"),
    ("--ranking-in {in}/beyond-ranking.json", "lists example 5000, outside 0..1436"),
    ("--ranking-in {in}/notes.txt", "cannot read forgetting ranking"),
    ("--ranking-in {in}/empty-profile.json", "is not a forgetting ranking"),
    ("--out {in}/notes.txt", "--out {in}/notes.txt is a file, not a directory"),
    ("--out {in}/notes.txt/run", "Not a directory"),
    ("--out {in}/finished", "already holds a checkpoint; pass --resume"),
    ("--resume {in}/notes.txt", "is truncated or not a torch file"),
    ("--resume {in}/nothing-here", "checkpoint not found"),
    ("--resume {in}/finished", "is finished (1 of 1 epochs): nothing to resume"),
    ("--resume {in}/finished --lr 0.5", "--resume takes its configuration from the checkpoint; drop --lr"),
    ("--device armv7 --session emulator", "the armv7 emulation is a kernel runner, not a Relax VM"),
    ("--device arm64", "--device trains with the compiled backend; drop --backend torch-mask"),
    ("--session emulator", "--session says how to reach a --device; give --device TARGET too"),
    ("--device sparc", "unknown target 'sparc'"),
]


@pytest.mark.parametrize("args, message", BAD_TRAIN_ARGS, ids=[a for a, _ in BAD_TRAIN_ARGS])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(args, message, bad_inputs, capsys, tmp_path):
    argv = args.format(**{"in": bad_inputs}).split()
    if "--resume" not in argv:  # the flags under test come last, so that they win
        argv = FAST + ["--backend", "torch-mask"] + ([] if "--out" in args else ["--out", str(tmp_path / "run")]) + argv
    before = snapshot(tmp_path, bad_inputs)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_error_line(err, message.format(**{"in": bad_inputs}))
    assert snapshot(tmp_path, bad_inputs) == before  # no run directory made, no input file changed


def test_unwritable_out_is_refused_before_the_data_is_loaded(capsys, monkeypatch):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here to stand for a directory nobody may write")
    monkeypatch.setattr("mest.trainer.load_dataset", lambda *args: pytest.fail("the data was loaded"))
    code, err = run_cli(FAST + ["--out", "/sys/mest-tvm-run"], capsys)
    assert code == 2
    assert_one_error_line(err, "cannot create --out directory /sys/mest-tvm-run")


def test_every_flag_states_its_default():
    for action in build_parser()._actions:
        if not {"--help", "--list-presets"} & set(action.option_strings):
            assert "default" in action.help, action.option_strings


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


def test_a_second_run_loads_every_kernel_from_disk_and_builds_none(tmp_path):
    env = {**os.environ, "MEST_TVM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    script = """
import json, sys
from mest.train import main
from schedules.cache import default_cache
assert main(["--model", "tiny", "--backend", "tvm", "--epochs", "2", "--update-freq", "1", "--no-progress",
             "--out", sys.argv[1]]) == 0
cache = default_cache()
print(json.dumps({"builds": cache.builds, "loads": cache.loads}))
"""
    counts = []
    for run in ("first", "second"):
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / run)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        counts.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert counts[0]["builds"] > 0 and counts[0]["loads"] == 0
    assert counts[1] == {"builds": 0, "loads": counts[0]["builds"]}


@pytest.mark.parametrize("fqn, what", [("layer2.0.shortcut.0.weight", "a 1x1 conv"), ("linear.weight", "the weight of a Linear")])
def test_a_layer_the_tvm_backend_cannot_hold_is_refused_before_the_data_loads(capsys, tmp_path, fqn, what):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({fqn: 0.9}))
    empty = tmp_path / "no-cifar-here"  # loading it would fail: the refusal must come first
    empty.mkdir()
    code, err = run_cli(FAST + ["--backend", "tvm", "--scheme", "irregular", "--profile", str(profile),
                                "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: the tvm and compiled backends cannot train {fqn} ({what})") and "--backend torch-mask" in err
    assert not (tmp_path / "run").exists()


def test_the_emulated_device_killed_mid_window_is_one_line_and_resume_continues(tmp_path, require_target_tools):
    require_target_tools("arm64")
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    device = ["--device", "arm64", "--session", "emulator"]
    command = [sys.executable, "-m", "mest.train", *FAST, *device, "--epochs", "3", "--batch-size", "8",
               "--update-freq", "1", "--decay-epochs", "2-3", "--remove-count", "0", "--out", str(out)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch's window (180 steps), after the first epoch's checkpoint
    assert proc.poll() is None, "the run ended before its device could be killed"
    emulators = [p for p in psutil.Process(proc.pid).children(recursive=True) if "qemu" in p.name()]
    assert len(emulators) == 1
    emulators[0].kill()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lost its server" in errors[0] and f"--resume {out} --device arm64" in errors[0]
    assert load_checkpoint(out).epoch == 1  # the last checkpoint is whole

    resumed = subprocess.run([sys.executable, "-m", "mest.train", "--resume", str(out), *device, "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "on emulator session (arm64" in resumed.stdout
    assert load_checkpoint(out).epoch == 3
    assert "emulated: a correctness run, its time is no speed" in resumed.stdout
