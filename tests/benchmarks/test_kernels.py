"""``python -m benchmarks.kernels`` on one small layer: every variant reports, JSON and table written."""

from __future__ import annotations

from benchmarks.kernels import DIRECTIONS


def test_one_layer_against_pytorch_in_processes_of_their_own(run_benchmark, tmp_path):
    completed, payload = run_benchmark(
        "kernels", "--model", "resnet20", "--layers", "16x16@32 s1", "--batch", "2", "--schemes", "irregular",
        "--densities", "0.1", "--rounds", "1", "--warmup", "1", "--steps", "1", "--db", str(tmp_path / "db.json"))
    assert completed.returncode == 0, completed.stderr
    names = [v["name"] for v in payload["variants"]]
    assert names == ["pytorch-nchw", "pytorch-channels-last", "pytorch-masked irregular 0.1", "ours irregular 0.1"]
    assert len({v["processes"][0]["pid"] for v in payload["variants"]}) == 4
    (record,) = payload["records"]
    assert (record["layer"], record["scheme"], record["ours"]["builds"]) == ("16x16@32 s1", "irregular", 3)
    for direction in DIRECTIONS:
        cell = record["directions"][direction]
        assert cell["ours"]["median_s"] > 0 and cell["vs_dense"] > 0 and cell["vs_masked"] > 0
    assert payload["totals"][0]["directions"]["forward"]["vs_dense"] > 0
    assert "| layer | scheme | density |" in completed.stdout
