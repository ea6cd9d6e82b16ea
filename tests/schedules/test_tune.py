"""Tuning: a short run writes records; another process reuses them without searching and builds the tuned kernel."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schedules.database import TuningDatabase
from schedules.tune import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--scheme", "irregular", "--density", "0.1", "--trials", "3", "--batch", "2", "--layers", "128x128@8 s1", "--directions", "forward,grad_weight"]


def test_short_run_writes_records_and_second_process_reuses_them(tmp_path, capsys):
    db = tmp_path / "tune-db"
    assert main([*ARGS, "--tune-db", str(db)]) == 0
    first = capsys.readouterr().out
    assert "3 trials" in first and "PyTorch dense" in first
    records = TuningDatabase(db)
    assert len(records) == 2

    second = subprocess.run([sys.executable, "-m", "schedules.tune", *ARGS, "--tune-db", str(db)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("[reused]") == 2

    check = textwrap.dedent(
        f"""
        from schedules.cache import KernelCache, workload
        from schedules.database import TuningDatabase
        from schedules.tune import layer_format
        from schedules.workloads import model_layers

        layer = [l for l in model_layers("resnet32") if l.name == "128x128@8 s1"][0]
        fmt = layer_format(layer, "irregular", 0.1)
        database = TuningDatabase({str(db)!r})
        kernel = KernelCache(database).get(fmt, "forward", layer.x_shape(2), 1)
        print(kernel.key.knobs == database.lookup(workload(fmt, "forward", layer.x_shape(2), 1, "x86")).knobs)
        """
    )
    built = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == "True"


@pytest.mark.parametrize("argv, message", [
    (["--scheme", "block", "--layers", "nope"], "no layer of resnet32 is named 'nope'"),
    (["--scheme", "block", "--density", "0"], "--density 0 is outside (0, 1]"),
    (["--scheme", "block", "--density", "1.5"], "--density 1.5 is outside (0, 1]"),
    (["--scheme", "block", "--trials", "-1"], "--trials must be at least 0"),
    (["--scheme", "block", "--batch", "0"], "--batch must be at least 1"),
    (["--scheme", "block", "--target", "sparc"], "sparc"),
    (["--scheme", "block", "--model", "vgg"], "unknown model 'vgg'"),
    (["--scheme", "diagonal"], "invalid choice: 'diagonal'"),
    (["--scheme", "block", "--directions", "sideways"], "--directions takes some of"),
    (["--scheme", "block", "--density", "lots"], "invalid float value: 'lots'"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(tmp_path, capsys, argv, message):
    db = tmp_path / "tune-db"
    with pytest.raises(SystemExit) if "invalid" in message else contextlib.nullcontext() as raised:
        code = main([*argv, "--tune-db", str(db)])
    code = raised.value.code if raised is not None else code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not db.exists()
