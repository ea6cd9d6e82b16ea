"""``python -m benchmarks.inference`` and ``benchmarks.crossover`` at a tiny size: compiled in their own processes,
or (``crossover --session emulator``) run on the emulated arm64 device."""

from __future__ import annotations

import json


def test_compiled_sparse_against_tvm_dense_and_pytorch(run_benchmark, tmp_path):
    completed, payload = run_benchmark(
        "inference", "--model", "tiny", "--batch", "2", "--image-size", "8", "--schemes", "channel",
        "--sparse-trials", "0", "--rounds", "1", "--warmup", "1", "--steps", "1", "--tune-db", str(tmp_path / "db"))
    assert completed.returncode == 0, completed.stderr
    rows = {row["variant"]: row for row in payload["table"]}
    assert list(rows) == ["pytorch-nchw", "pytorch-channels-last", "tvm-dense", "tvm-sparse channel"]
    sparse = rows["tvm-sparse channel"]
    assert sparse["max_logit_error"] < 1e-4 and sparse["kernels"] == ["channel"]
    assert sparse["bytes"]["stored"] < sparse["bytes"]["dense"] and sparse["vs_tvm_dense"] > 0
    assert sparse["vs_pytorch"] > 0 and sparse["compile_s"] > 0
    assert len({v["processes"][0]["pid"] for v in payload["variants"]}) == 4
    assert "| variant | forward ms, median (min-max) |" in completed.stdout


def test_crossover_of_one_conv(run_benchmark, tmp_path):
    completed, payload = run_benchmark(
        "crossover", "--layer", "8,8,8", "--batch", "1", "--schemes", "irregular", "--densities", "0.2",
        "--rounds", "1", "--warmup", "1", "--steps", "1", "--tune-db", str(tmp_path / "db"))
    assert completed.returncode == 0, completed.stderr
    assert [v["name"] for v in payload["variants"]] == ["tvm-dense", "tvm-sparse irregular 0.2"]
    found = payload["crossover"]["irregular"]
    assert set(found["sparse"]) == {"0.2"} and found["crossover"] in (0.0, 0.2)
    assert payload["variants"][1]["processes"][0]["info"]["kernels"] == ["irregular"]


def test_crossover_through_the_emulator_says_its_timings_are_no_speed(arm64_emulator_session, tmp_path, capsys):
    """``--session emulator``: the convs are built for arm64 and run on the emulated device; the command
    warns that emulated timings are no speed, records it, and suggests no crossover."""
    import benchmarks.crossover as crossover
    from benchmarks.harness import run_command

    out = tmp_path / "report.json"
    code = run_command(crossover.main, [
        "--session", "emulator", "--target", "arm64", "--layer", "4,5,6", "--batch", "1", "--schemes", "irregular",
        "--densities", "0.3", "--rounds", "2", "--warmup", "1", "--steps", "2", "--tune-db", str(tmp_path / "db"),
        "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "timings under emulation are no speed of arm64; no crossover is suggested" in captured.err
    payload = json.loads(out.read_text())
    assert payload["emulated"] is True and payload["target"] == "arm64" and "qemu" in payload["session"]
    assert [v["name"] for v in payload["variants"]] == ["tvm-dense", "tvm-sparse irregular 0.3"]
    assert all(len(v["processes"]) == 2 and v["processes"][0]["emulated"] for v in payload["variants"])
    assert payload["variants"][1]["processes"][0]["info"]["kernels"] == ["irregular"]
    found = payload["crossover"]["irregular"]
    assert set(found["sparse"]) == {"0.3"} and found["crossover"] is None
    assert "none (emulated)" in captured.out


def test_crossover_refuses_a_session_without_a_runtime(require_target_tools, tmp_path, capsys):
    import benchmarks.crossover as crossover
    from benchmarks.harness import run_command

    require_target_tools("armv7")
    code = run_command(crossover.main, ["--session", "emulator", "--target", "armv7", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "single kernels only" in err, err
    assert not (tmp_path / "r.json").exists()
