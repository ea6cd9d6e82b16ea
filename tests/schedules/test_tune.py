"""Tuning: a short run writes records; another process reuses them without searching and builds the tuned kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from schedules.database import TuningDatabase
from schedules.tune import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--scheme", "irregular", "--density", "0.1", "--trials", "3", "--batch", "2", "--layers", "128x128@8 s1", "--directions", "forward,grad_weight"]


def test_short_run_writes_records_and_second_process_reuses_them(tmp_path, capsys):
    db = tmp_path / "tuning.json"
    assert main([*ARGS, "--db", str(db)]) == 0
    first = capsys.readouterr().out
    assert "3 trials" in first and "PyTorch dense" in first
    records = TuningDatabase(db)
    assert len(records) == 2

    second = subprocess.run([sys.executable, "-m", "schedules.tune", *ARGS, "--db", str(db)], capture_output=True, text=True, cwd=ROOT, timeout=300)
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


def test_unknown_layer_is_a_one_line_error(tmp_path, capsys):
    assert main(["--scheme", "block", "--layers", "nope", "--db", str(tmp_path / "db.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
