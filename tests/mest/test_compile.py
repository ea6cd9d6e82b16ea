"""``python -m mest.compile``: a trained checkpoint becomes a library for x86 or ARM; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_checks import assert_one_error_line, snapshot

from devices.errors import ToolchainMissingError
from devices.targets import get_target, host_target_name
from mest.checkpoint import save_checkpoint
from mest.compile import _parser, main

ROOT = Path(__file__).resolve().parents[2]
#: This machine's target: the builds checked and timed here are for it.
HOST = host_target_name()


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run of the trainer: the tiny model, one epoch on digits, irregular 90%."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = _run("-m", "mest.train", "--model", "tiny", "--epochs", "1", "--out", str(out), "--no-progress",
                  "--backend", "torch-mask")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache (default tuning database, built kernels) for one test; the ARM tests keep the
    shared one, where the aarch64 runtime and the armv7 kernel runner are built once, and pass --tune-db."""
    monkeypatch.setenv("MEST_TVM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_host_compile_writes_library_params_and_report(trained_run, tmp_path, cache):
    out = tmp_path / HOST
    result = _run("-m", "mest.compile", str(trained_run), "--target", HOST, "--out", str(out),
                  env_extra={"MEST_TVM_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name for p in out.iterdir()} == {"model.so", "params.npz", "report.json"}
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == HOST and report["compile_seconds"] > 0
    assert list(report["phase_seconds"]) == ["import", "annotate", "fold", "lower", "legalize and fuse",
                                             "tuning database", "build"]
    assert "max |logit error|" in report["check"]
    for layer in report["layers"]:
        assert layer["kernel"] == "irregular" and layer["bytes_stored"] < layer["bytes_dense"]
        assert layer["time_ms"] > 0
    assert "irregular" in result.stdout and "bytes stored" in result.stdout
    assert (cache / "tune-db" / "meta.json").is_file()
    with np.load(out / "params.npz") as params:
        assert any(name.endswith("/values") for name in params.files)


def test_arm_library_runs_under_the_emulator_by_default(trained_run, tmp_path):
    try:
        get_target("arm64").require_tools(need_qemu=True)
    except ToolchainMissingError as err:
        pytest.skip(str(err))
    out = tmp_path / "arm"
    assert main([str(trained_run), "--target", "arm", "--out", str(out), "--tune-db", str(tmp_path / "db")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "arm64" and report["session"] == "emulator" and "emulator" in report["check"]
    assert all(layer["time_ms"] is None for layer in report["layers"])  # emulated: no speed
    assert (out / "model.so").read_bytes()[:4] == b"\x7fELF"


def test_armv7_kernels_run_under_the_emulator(trained_run, tmp_path):
    try:
        get_target("armv7").require_tools(need_qemu=True)
    except ToolchainMissingError as err:
        pytest.skip(str(err))
    out = tmp_path / "armv7"
    assert main([str(trained_run), "--target", "armv7", "--out", str(out), "--tune-db", str(tmp_path / "db")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["session"] == "emulator" and "sparse kernels match the host build" in report["check"]
    assert (out / "model.so").read_bytes()[:5] == b"\x7fELF\x01"  # 32-bit ELF


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_unknown_target(trained_run, capsys, cache):
    assert main([str(trained_run), "--target", "riscv"]) == 2
    assert "unknown target 'riscv'" in _one_error_line(capsys)


def test_corrupt_checkpoint(tmp_path, capsys, cache):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main([str(bad), "--target", "x86"]) == 2
    assert "truncated or not a torch file" in _one_error_line(capsys)
    assert bad.read_bytes() == b"not a checkpoint at all"


def test_checkpoint_without_masks(trained_run, tmp_path, capsys, cache):
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    state["sparse"] = {**state["sparse"], "masks": {}, "schemes": {}}
    path = tmp_path / "dense.pt"
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    assert main([str(path), "--target", "x86"]) == 2
    assert "has no masks" in _one_error_line(capsys)


def test_tuning_for_arm_without_a_real_device_is_refused(trained_run, capsys, cache):
    assert main([str(trained_run), "--target", "arm", "--trials", "4", "--session", "emulator"]) == 2
    assert "needs a device that measures real speed" in _one_error_line(capsys)


def test_missing_toolchain(trained_run, capsys, cache, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no cross-compiler can be found
    assert main([str(trained_run), "--target", "armv7"]) == 2
    line = _one_error_line(capsys)
    assert "arm-linux-gnueabihf-g++" in line and "apt-get install" in line


def test_a_foreign_tuning_database_is_set_aside_with_a_warning(trained_run, tmp_path, capsys, cache):
    db = tmp_path / "db"
    db.mkdir()
    (db / "meta.json").write_text('{"format": "mest-tune-db", "version": 1, "tvm": "0.19.0"}')
    (db / f"dense-{HOST}").mkdir()
    (db / f"dense-{HOST}" / "database_workload.json").write_text("{ not json")
    assert main([str(trained_run), "--target", HOST, "--tune-db", str(db), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: tuning database" in err and "not a mest-tvm tuning database" in err and "Traceback" not in err
    aside = sorted(p.name for p in db.iterdir() if ".foreign-" in p.name)
    assert [name.split(".foreign-")[0] for name in aside] == [f"dense-{HOST}", "meta.json"]
    assert (db / aside[0] / "database_workload.json").read_text() == "{ not json"


@pytest.fixture(scope="module")
def compile_inputs(trained_run, tmp_path_factory) -> Path:
    """Files a user may hand to mest.compile by mistake: a text file, a damaged and an inconsistent checkpoint."""
    inputs = tmp_path_factory.mktemp("in")
    (inputs / "notes.txt").write_text("not a checkpoint\n")
    data = bytearray((trained_run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights' bytes
    (inputs / "damaged.pt").write_bytes(bytes(data))
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    fqn = next(iter(state["sparse"]["masks"]))
    state["sparse"]["masks"][fqn] = state["sparse"]["masks"][fqn][:1]
    save_checkpoint(inputs / "inconsistent.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    return inputs


#: Bad command lines of mest.compile ({run} = a trained run, {in} = compile_inputs) and their error's words.
BAD_COMPILE_ARGS = [
    ("{in}/notes.txt --target x86", "is truncated or not a torch file"),
    ("{in}/missing.pt --target x86", "checkpoint not found"),
    ("{in}/damaged.pt --target x86", "fails its checksum"),
    ("{in}/inconsistent.pt --target x86", "fits no weight of the model"),
    ("{run}", "the following arguments are required: --target"),
    ("{run} --target riscv", "unknown target 'riscv'"),
    ("{run} --target x86 --batch 0", "--batch >= 1"),
    ("{run} --target x86 --batch two", "invalid int value: 'two'"),
    ("{run} --target x86 --trials -1", "--trials must be >= 0"),
    ("{run} --target x86 --out {in}/notes.txt", "--out {in}/notes.txt is a file, not a directory"),
    ("{run} --target x86 --out {in}/notes.txt/lib", "cannot create --out directory"),
    ("{run} --target x86 --dump-ir {in}/notes.txt", "--dump-ir {in}/notes.txt is a file, not a directory"),
    ("{run} --target x86 --tune-db {in}/notes.txt", "cannot create the tuning database"),
    ("{run} --target x86 --session bogus", "unknown session kind 'bogus'"),
]


@pytest.mark.parametrize("args, message", BAD_COMPILE_ARGS, ids=[a for a, _ in BAD_COMPILE_ARGS])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(args, message, trained_run, compile_inputs, capsys, cache):
    names = {"run": trained_run, "in": compile_inputs}
    before = snapshot(trained_run, compile_inputs)
    try:
        code = main(args.format(**names).split())
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, message.format(**names))
    assert snapshot(trained_run, compile_inputs) == before


def test_every_flag_states_its_default():
    for action in _parser()._actions:
        if action.option_strings and "--help" not in action.option_strings:
            assert "default" in action.help or "required" in action.help, action.option_strings
def test_dense_records_metaschedule_rejects_are_set_aside_and_compile_succeeds(trained_run, tmp_path, capsys, cache):
    db = tmp_path / "db"
    assert main([str(trained_run), "--target", HOST, "--tune-db", str(db), "--out", str(tmp_path / "a")]) == 0
    rejected = b'["not base64!", "x"]\n'  # JSON lines, so only MetaSchedule itself can refuse them
    (db / f"dense-{HOST}" / "database_workload.json").write_bytes(rejected)
    capsys.readouterr()
    assert main([str(trained_run), "--target", HOST, "--tune-db", str(db), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "warning: tuning database" in err and "MetaSchedule cannot read it" in err and "Traceback" not in err
    aside = [p for p in db.iterdir() if p.name.startswith(f"dense-{HOST}.rejected-")]
    assert len(aside) == 1 and (aside[0] / "database_workload.json").read_bytes() == rejected
    assert json.loads((tmp_path / "b" / "report.json").read_text())["check"].startswith("max |logit error|")


def test_a_record_of_schedules_tune_is_applied_by_training_and_by_compile(tmp_path, cache):
    # One tuning database, found by default by all three commands (MEST_TVM_CACHE points at `cache`).
    env = {"MEST_TVM_CACHE": str(cache)}
    layer, batch = "8x8@8 s1", 16  # layer1.0.conv1/conv2 of the tiny model on 8x8 digits
    tuned = _run("-m", "schedules.tune", "--model", "tiny", "--image-size", "8", "--scheme", "irregular",
                 "--density", "0.1", "--layers", layer, "--directions", "forward", "--trials", "2",
                 "--batch", str(batch), env_extra=env)
    assert tuned.returncode == 0, tuned.stderr
    from schedules.cache import workload
    from schedules.database import TuningDatabase
    from schedules.tune import layer_format
    from schedules.workloads import select_layers

    conv = select_layers("tiny", layer, image_size=8)[0]
    key = workload(layer_format(conv, "irregular", 0.1), "forward", conv.x_shape(batch), 1, HOST)
    record = TuningDatabase(cache / "tune-db").lookup(key)
    assert record is not None and record.trials == 2

    run = tmp_path / "run"
    train = textwrap.dedent(f"""
        import json
        from mest.train import main
        from schedules.cache import default_cache

        assert main(["--model", "tiny", "--backend", "tvm", "--epochs", "1", "--batch-size", "{batch}",
                     "--scheme", "irregular", "--sparsity", "0.9", "--schedule", "em", "--no-progress",
                     "--out", {str(run)!r}]) == 0
        print(json.dumps([key.knobs.to_json() for key in default_cache().keys()
                          if key.direction == "forward" and key.weight_shape == (8, 8, 3, 3)]))
    """)
    trained = _run("-c", train, env_extra=env)
    assert trained.returncode == 0, trained.stderr
    used = json.loads(trained.stdout.strip().splitlines()[-1])
    assert used == [record.knobs.to_json()]

    out = tmp_path / "compiled"
    compiled = _run("-m", "mest.compile", str(run), "--target", HOST, "--batch", str(batch), "--out", str(out),
                    env_extra=env)
    assert compiled.returncode == 0, compiled.stderr
    reasons = {layer["fqn"]: layer["reason"] for layer in json.loads((out / "report.json").read_text())["layers"]}
    for fqn in ("layer1.0.conv1.weight", "layer1.0.conv2.weight"):
        assert "tuned" in reasons[fqn] and "2 trials" in reasons[fqn], reasons
