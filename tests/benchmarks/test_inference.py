"""``python -m benchmarks.inference`` and ``benchmarks.crossover`` at a tiny size: compiled in their own processes."""

from __future__ import annotations


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
