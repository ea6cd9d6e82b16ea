"""Tuning: a short run writes records; another process reuses them without searching and builds the tuned kernel."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
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
        from devices.targets import host_target_name
        from schedules.cache import KernelCache, workload
        from schedules.database import TuningDatabase
        from schedules.tune import layer_format
        from schedules.workloads import model_layers

        layer = [l for l in model_layers("resnet32") if l.name == "128x128@8 s1"][0]
        fmt = layer_format(layer, "irregular", 0.1)
        database = TuningDatabase({str(db)!r})
        kernel = KernelCache(database).get(fmt, "forward", layer.x_shape(2), 1)
        print(kernel.key.knobs == database.lookup(workload(fmt, "forward", layer.x_shape(2), 1, host_target_name())).knobs)
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


FLEET_ARGS = ["--model", "tiny", "--image-size", "8", "--scheme", "irregular", "--density", "0.1", "--trials", "5",
              "--batch", "2", "--layers", "8x8@8 s1", "--directions", "forward,grad_weight"]


def test_a_tune_through_a_tracker_measures_on_every_free_device_and_outlives_a_killed_one(tmp_path, capsys):
    from devices.loopback import start_rpc_server, start_tracker

    local = tmp_path / "local-db"
    assert main([*FLEET_ARGS, "--tune-db", str(local)]) == 0
    capsys.readouterr()
    fleet_db = tmp_path / "fleet-db"
    with start_tracker() as tracker:
        servers = [start_rpc_server(tracker=tracker.address, key="fleet") for _ in range(2)]
        try:
            tune = subprocess.Popen([sys.executable, "-m", "schedules.tune", *FLEET_ARGS, "--tune-db", str(fleet_db),
                                     "--session", f"tracker:{tracker.host}:{tracker.port}:fleet"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while not (fleet_db / "sparse.json").exists():  # the first kernel's record: one kernel to go
                assert tune.poll() is None, tune.communicate()
                time.sleep(0.05)
            servers[0].kill()
            out, err = tune.communicate(timeout=600)
        finally:
            for server in servers:
                server.stop()
    assert tune.returncode == 0, err
    report = {line.split(", device ")[1].split(":")[1]: line for line in out.splitlines() if ", device " in line}
    killed, kept = report[str(servers[0].port)], report[str(servers[1].port)]
    assert killed.endswith("(lost)") and "lost" in err, (out, err)
    worked = [int(line.split(": ")[-1].split()[0]) for line in (killed, kept)]
    assert worked[0] >= 1 and worked[1] > worked[0], report  # both measured; the survivor did the rest
    # The same database a local tune writes: every kernel, with the same number of trials.
    from devices.targets import host_target_name
    from schedules.cache import workload
    from schedules.tune import layer_format
    from schedules.workloads import select_layers

    conv = select_layers("tiny", "8x8@8 s1", image_size=8)[0]
    fmt = layer_format(conv, "irregular", 0.1)
    databases = [TuningDatabase(fleet_db), TuningDatabase(local)]
    assert [len(database) for database in databases] == [2, 2]
    for direction in ("forward", "grad_weight"):
        key = workload(fmt, direction, conv.x_shape(2), conv.stride, host_target_name())
        assert [database.lookup(key).trials for database in databases] == [5, 5], direction
def test_every_flag_says_its_default(flags_without_default):
    from schedules.tune import build_parser

    assert flags_without_default(build_parser()) == []
